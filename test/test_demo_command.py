"""`gm-skip demo` end to end on a tiny random Llava (the plumbing of `make demo`).

The shipped demo VLM runs the same code path in `make demo`; here a tiny model keeps the
test to seconds. Random weights give a flat metric, so this checks the outputs and their
consistency, not the quality (test_demo_model.py covers the shipped model's quality).
"""
from __future__ import annotations

import json

import pytest

from gm_skip_ros.cli import main as cli_main
from gm_skip_ros.data import open_dataset
from gm_skip_ros.models import load_vlm
from gm_skip_ros.search.compare import METHODS
from gm_skip_ros.search.evaluate import Evaluator
from gm_skip_ros.search.metrics import get_metric
from gm_skip_ros.search.plan import data_sha256, load_plan

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_job_and_its_outputs_agree(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = cli_main(["demo", "--tiny", "--out", str(out), "--threads", "1",
                   "--calib-frames", "6", "--heldout-frames", "6", "--reps", "2",
                   "--latency-tokens", "2", "--max-new-tokens", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "== summary" in printed and "speed-up" in printed

    for name in ("plan.json", "compare.png", "compare.json", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "calib_bag").is_dir() and (out / "heldout_bag").is_dir()

    plan = load_plan(out / "plan.json")
    summary = json.loads((out / "summary.json").read_text())
    n = summary["decoder_blocks"]["full"]
    assert n == 8
    assert summary["removed_decoder"] == plan.removed_decoder
    assert summary["decoder_blocks"]["pruned"] == n - len(plan.removed_decoder)
    assert plan.data["cost"]["evaluator"]["mode"] == "fast"
    for k in ("full", "pruned"):
        lat = summary["latency_ms"][k]
        assert 0 < lat["decode_ms"] < lat["total_ms"]
    assert summary["speedup"] == pytest.approx(
        summary["latency_ms"]["full"]["total_ms"] / summary["latency_ms"]["pruned"]["total_ms"])

    cmp = json.loads((out / "compare.json").read_text())
    assert set(cmp["curves"]) == set(METHODS)
    for point in cmp["curves"]["gm_skip"]:  # GM-Skip's curve follows the plan's order
        assert point["removed"] == plan.data["removal_order"][:point["k"]]

    pruned = load_vlm(out / "pruned_model")
    assert pruned.num_decoder_blocks == summary["decoder_blocks"]["pruned"]

    # What the demo reports for the pruned model is what the physically pruned directory
    # scores on the held-out bag (random weights: accuracy is 0 everywhere, the NLL is what
    # tells the models apart), and likewise for the full model at k = 0.
    held = open_dataset(out / "heldout_bag", task="classify")
    metric = get_metric("accuracy")
    op = plan.operating_step
    assert len(plan.removed_decoder) > 0, "the tiny demo should prune something"
    for name, model_dir, k in (("pruned", out / "pruned_model", op),
                               ("full", out / "tiny_model", 0)):
        r = Evaluator(load_vlm(model_dir), held, metric, max_new_tokens=3).evaluate()
        point = next(p for p in cmp["curves"]["gm_skip"] if p["k"] == k)
        assert summary["heldout_metric"][name] == r.score, name
        assert point["metric"] == r.score, name
        assert point["nll"] == pytest.approx(r.nll, rel=1e-4), name
    full_nll = next(p["nll"] for p in cmp["curves"]["gm_skip"] if p["k"] == 0)
    pruned_nll = next(p["nll"] for p in cmp["curves"]["gm_skip"] if p["k"] == op)
    assert pruned_nll != pytest.approx(full_nll, rel=1e-4), "NLL must tell the models apart"

    # the plan's records come from the shared helpers: data as read back, evaluator as run
    calib = open_dataset(out / "calib_bag", task="classify")
    assert plan.data["data"]["num_samples"] == len(calib) == 6
    assert plan.data["data"]["sha256"] == data_sha256(calib)
    assert plan.data["cost"]["evaluator"] == {"mode": "fast", "vision_cache": True,
                                              "prefix_reuse": True, "batch_size": 8,
                                              "batch_padding": False, "early_stop": True}
