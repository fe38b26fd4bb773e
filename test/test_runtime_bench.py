"""gm-skip bench and gm-skip export through the CLI on a tiny model (structure, not speed)."""
import json

import pytest

from gm_skip_ros.cli import main
from gm_skip_ros.models import load_vlm

from runtime_support import write_plan


@pytest.fixture(scope="module")
def plan(tiny_llava_dir, tmp_path_factory):
    ident = load_vlm(tiny_llava_dir, with_processor=False).identity()
    return write_plan(tmp_path_factory.mktemp("p") / "plan.json", ident, removed=[1, 3, 4])


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_bench_cli(tiny_llava_dir, plan, tmp_path, backend, capsys):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = main(["bench", "--model", str(tiny_llava_dir), "--plan", str(plan), "--backend", backend,
               "--reps", "3", "--warmup", "1", "--max-new-tokens", "4", "--threads", "1",
               "--exporter", "torchscript", "--cache-dir", str(tmp_path / "cache"),
               "--json", str(out_json), "--plot", str(out_png)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "measured total ratio pruned/full" in table and "ideal ratio" in table
    res = json.loads(out_json.read_text())
    assert res["backend"] == backend
    assert res["blocks"] == {"full": 6, "pruned": 3, "original": 6}
    assert res["ratios"]["blocks_kept"] == 0.5
    s = res["block_share"]["share"]
    assert 0 < s < 1
    assert res["ratios"]["ideal_total"] == pytest.approx(1 - s + s * 0.5)
    for name in ("full", "pruned"):
        total = res["stages"][name]["total_ms"]
        assert total["n"] == 3 and total["p10"] <= total["median"] <= total["p90"]
    assert res["settings"]["max_new_tokens"] == 4 and res["settings"]["interleaved"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_cli(tiny_llava_dir, plan, tmp_path, capsys):
    out = tmp_path / "onnx"
    rc = main(["export", "--model", str(tiny_llava_dir), "--plan", str(plan), "--out", str(out),
               "--exporter", "torchscript"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["blocks"] == "3/6" and summary["opset"] == 18
    assert summary["exporters"] == {"vision.onnx": "torchscript", "decoder.onnx": "torchscript"}
    # build-engine: a clear refusal naming the alternative where TensorRT is absent
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        rc = main(["build-engine", "--onnx-dir", str(out), "--precision", "fp16",
                   "--cache-dir", str(tmp_path / "eng"), "--build-only"])
        assert rc == 2
        assert "onnxruntime" in capsys.readouterr().err
        assert not (tmp_path / "eng").exists()


def test_bench_rejects_bad_plan(tiny_llava_dir, tmp_path, capsys):
    bad = tmp_path / "plan.json"
    bad.write_text("{}")
    rc = main(["bench", "--model", str(tiny_llava_dir), "--plan", str(bad), "--backend", "torch",
               "--reps", "1"])
    assert rc == 2 and "plan" in capsys.readouterr().err
