"""ONNX Runtime backend: same tokens as the torch backend and generate(), export cache."""
import numpy as np
import pytest
import torch

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.models import build_inputs, load_vlm
from gm_skip_ros.runtime import create_backend

from runtime_support import sharpened_model_dir, write_plan

pytest.importorskip("onnxruntime")
PROMPT = "What is the main object?"


@pytest.fixture(scope="module")
def model_dir(tiny_llava_dir, tmp_path_factory):
    return sharpened_model_dir(tiny_llava_dir, tmp_path_factory.mktemp("m") / "sharp_llava")


@pytest.fixture(scope="module")
def plan(model_dir, tmp_path_factory):
    ident = load_vlm(model_dir, with_processor=False).identity()
    return write_plan(tmp_path_factory.mktemp("p") / "plan.json", ident, removed=[2, 4])


def _image(seed=0):
    return np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)


@pytest.mark.parametrize("with_plan", [False, True])
def test_ort_matches_torch_and_generate(model_dir, plan, with_plan, tmp_path):
    plan_path = plan if with_plan else None
    tb = create_backend("torch", model_dir, plan_path, num_threads=1)
    ob = create_backend("onnxruntime", model_dir, plan_path, num_threads=1,
                        export_cache_dir=tmp_path, exporter="torchscript")
    assert ob.name == "onnxruntime" and tb.name == "torch"
    assert (ob.model_id, ob.plan_id, ob.blocks_active, ob.blocks_total) == \
        (tb.model_id, tb.plan_id, tb.blocks_active, tb.blocks_total)
    assert ob.blocks_active == (4 if with_plan else 6) and ob.blocks_total == 6
    assert (ob.plan_id != "full") == with_plan
    for seed in range(2):
        img = _image(seed)
        r_t = tb.generate(img, PROMPT, max_new_tokens=10)
        r_o = ob.generate(img, PROMPT, max_new_tokens=10)
        inputs, n = build_inputs(tb.processor, img, PROMPT)
        with torch.no_grad():
            ref = tb.vlm.model.generate(**inputs, max_new_tokens=10, do_sample=False)
        assert list(r_o.tokens) == list(r_t.tokens) == ref[0, n:].tolist()
        assert r_o.text == r_t.text
        assert len(set(r_o.tokens)) > 1


def test_session_options(model_dir, tmp_path):
    ob = create_backend("onnxruntime", model_dir, num_threads=1, export_cache_dir=tmp_path,
                        exporter="torchscript")
    for sess in (ob.vision, ob.decoder):
        so = sess.get_session_options()
        assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1
        assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert sess.get_providers() == ["CPUExecutionProvider"]


def test_export_cache_reused_and_repaired(model_dir, tmp_path):
    kw = dict(export_cache_dir=tmp_path, exporter="torchscript", num_threads=1)
    b1 = create_backend("onnxruntime", model_dir, **kw)
    dec = b1.onnx_dir / "decoder.onnx"
    stamp = dec.stat().st_mtime_ns
    b2 = create_backend("onnxruntime", model_dir, **kw)
    assert b2.onnx_dir == b1.onnx_dir and dec.stat().st_mtime_ns == stamp  # reused
    ref = b2.generate(_image(), PROMPT, 6).tokens
    dec.write_bytes(dec.read_bytes()[:-100])  # truncated: the cache must not serve it
    b3 = create_backend("onnxruntime", model_dir, **kw)
    assert b3.onnx_dir == b1.onnx_dir
    assert b3.generate(_image(), PROMPT, 6).tokens == ref
    assert len(list(tmp_path.iterdir())) == 1  # no temp or stale directories left


def test_onnx_dir_of_other_plan_refused(model_dir, plan, tmp_path):
    full = create_backend("onnxruntime", model_dir, export_cache_dir=tmp_path,
                          exporter="torchscript")
    with pytest.raises(GmSkipError, match="plan"):
        create_backend("onnxruntime", model_dir, plan, onnx_dir=full.onnx_dir)


def test_plan_for_another_model_refused(model_dir, tiny_llava_dir, tmp_path):
    other = write_plan(tmp_path / "p.json", load_vlm(tiny_llava_dir).identity(), removed=[1])
    with pytest.raises(GmSkipError, match="another model"):
        create_backend("onnxruntime", model_dir, other, export_cache_dir=tmp_path)


def test_cuda_without_provider(model_dir, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(GmSkipError, match="CUDAExecutionProvider"):
        create_backend("onnxruntime", model_dir, device="cuda", export_cache_dir=tmp_path,
                       exporter="torchscript")


def test_block_time_share(model_dir, tmp_path):
    img = _image()
    for kind in ("torch", "onnxruntime"):
        b = create_backend(kind, model_dir, num_threads=1, export_cache_dir=tmp_path,
                           exporter="torchscript")
        s = b.block_time_share(img, PROMPT, 4, reps=1)
        assert 0.0 < s["share"] < 1.0 and s["block_ms"] < s["total_ms"]
