"""GM-Skip search, baselines, metrics and plans on a tiny Llava with a planted structure.

Planted structure: decoder blocks {2, 4, 5} are made exact identities (their attention
output and MLP down projections are zero, so the residual passes through), blocks
{0, 1, 3} are given large weights so that removing any of them changes the generated text.
The references are the unpruned model's own greedy answers, so exact match is 1.0 for the
unpruned model and for any removal of identity blocks only.
"""
import json

import numpy as np
import pytest
import torch

from gm_skip_ros.cli import main as cli_main
from gm_skip_ros.data.sample import Sample
from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.models import load_vlm
from gm_skip_ros.search.evaluate import Evaluator
from gm_skip_ros.search.fast import FastEvaluator
from gm_skip_ros.search.greedy import (
    SearchConfig, block_influence_order, drop_last_order, eligible_blocks, gm_skip_search,
    sleb_order,
)
from gm_skip_ros.search.metrics import get_metric
from gm_skip_ros.search.plan import load_plan, load_pruned_vlm, new_plan

IDENTITY = {2, 4, 5}
IMPORTANT = {0, 1, 3}
PROMPT = "what is the main object ?"


def _plant(model):
    layers = model.model.language_model.layers
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i, blk in enumerate(layers):
            if i in IDENTITY:
                blk.self_attn.o_proj.weight.zero_()
                blk.mlp.down_proj.weight.zero_()
            else:
                for p in blk.parameters():
                    if p.dim() == 2:
                        p.copy_(torch.randn(p.shape, generator=g) * 0.6)


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    from gm_skip_ros.models.tiny import build_tiny_vlm

    d = build_tiny_vlm("llava", tmp_path_factory.mktemp("planted") / "m", seed=3)
    vlm = load_vlm(d)
    _plant(vlm.model)
    vlm.model.save_pretrained(d)
    return d


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def planted(planted_dir):
    """(vlm, samples whose answers are the unpruned model's greedy outputs)."""
    vlm = load_vlm(planted_dir)
    probe = [Sample(im, PROMPT, ("x",), id=f"s{i}") for i, im in enumerate(_images(10))]
    ev = Evaluator(vlm, probe, get_metric("exact_match"), max_new_tokens=3)
    preds = ev.evaluate().predictions
    assert len(set(preds)) > 1, "the planted model should answer differently per image"
    samples = [Sample(s.image, PROMPT, (p,), id=s.id) for s, p in zip(probe, preds)]
    return vlm, samples


def test_metrics():
    from gm_skip_ros.search.metrics import classification_accuracy, cider_d, exact_match

    syn = {"traffic light": ["traffic signal", "signal"], "car": ["automobile"]}
    assert classification_accuracy(["The Traffic-Signal.", "a car", "bus"],
                                   [["traffic light"], ["automobile"], ["car"]], syn) == \
        pytest.approx(2 / 3)
    # a sentence naming exactly one class counts; naming two does not
    assert classification_accuracy(["a red car on the left"], [["car"]], syn) == 1.0
    assert classification_accuracy(["a car and a traffic light"], [["car"]], syn) == 0.0
    assert exact_match(["A car."], [["car"]]) == 1.0
    assert exact_match(["car"], [["bus", "truck"]], per_sample=True) == [0.0]
    refs = [["a red car on the road"], ["a bus at night"], ["a stop sign in the rain"]]
    good = cider_d(["a red car on the road", "a bus at night", "a stop sign in the rain"], refs)
    bad = cider_d(["a bus at night"] * 3, refs)
    assert good > 3 * bad and good > 1.0
    with pytest.raises(GmSkipError, match="unknown metric"):
        get_metric("bleu9")


def test_registered_user_metric_keeps_per_sample_mean_by_path(tmp_path, monkeypatch):
    """``--metric module:function`` of a @register_metric(per_sample_mean=True) function
    must enable early stopping exactly as the registered name does."""
    import sys

    from gm_skip_ros.search import metrics

    monkeypatch.setattr(metrics, "_REGISTRY", dict(metrics._REGISTRY))
    (tmp_path / "gm_skip_user_metric.py").write_text(
        "from gm_skip_ros.search.metrics import register_metric\n\n\n"
        "@register_metric('user_mean', per_sample_mean=True)\n"
        "def mean_metric(predictions, references, per_sample=False):\n"
        "    s = [float(p in r) for p, r in zip(predictions, references)]\n"
        "    return s if per_sample else sum(s) / len(s)\n\n\n"
        "@register_metric('user_corpus')\n"
        "def corpus_metric(predictions, references, per_sample=False):\n"
        "    return 0.0\n\n\n"
        "def bare(predictions, references, per_sample=False):\n"
        "    return 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        by_path = get_metric("gm_skip_user_metric:mean_metric")
        assert by_path.per_sample_mean is True
        assert get_metric("user_mean").per_sample_mean is True
        assert by_path(["a", "b"], [["a"], ["c"]], per_sample=True) == [1.0, 0.0]
        assert get_metric("gm_skip_user_metric:corpus_metric").per_sample_mean is False
        assert get_metric("user_corpus").per_sample_mean is False
        assert get_metric("gm_skip_user_metric:bare").per_sample_mean is False
    finally:
        sys.modules.pop("gm_skip_user_metric", None)
    # the built-ins carry it too
    assert metrics.exact_match.per_sample_mean is True
    assert metrics.cider_d.per_sample_mean is False


def test_eligibility_is_reverse_order_with_protect_and_window():
    cfg = SearchConfig(protect_first=2, window=3)
    assert eligible_blocks(cfg, 8, 0, []) == [("decoder", 7), ("decoder", 6), ("decoder", 5)]
    assert eligible_blocks(cfg, 8, 0, [("decoder", 6)]) == [
        ("decoder", 7), ("decoder", 5), ("decoder", 4)]
    assert eligible_blocks(SearchConfig(protect_first=2), 4, 0, []) == [
        ("decoder", 3), ("decoder", 2)]
    with pytest.raises(GmSkipError, match="nothing is eligible"):
        SearchConfig(protect_first=4).validate(4, 0)


def test_greedy_finds_the_planted_identity_blocks(planted):
    vlm, samples = planted
    ev = Evaluator(vlm, samples, get_metric("exact_match"), max_new_tokens=3)
    cfg = SearchConfig(metric="exact_match", protect_first=1, min_relative_metric=0.99,
                       max_new_tokens=3)
    res = gm_skip_search(ev, cfg)
    assert res.steps[0].metric == 1.0
    # identities tie on metric and NLL: reverse order decides (later block first)
    assert res.steps[3].removed == ["decoder:5", "decoder:4", "decoder:2"]
    assert [s.metric for s in res.steps[:4]] == [1.0] * 4
    assert res.operating_step == 3
    # the search went one step further, found every remaining removal harmful, and stopped
    assert len(res.steps) == 5 and not res.steps[4].meets_min_metric
    assert {c.block for c in res.steps[4].candidates} == {"decoder:3", "decoder:1"}
    assert all(c.metric < 0.99 for c in res.steps[4].candidates)
    # every candidate of every step is recorded
    assert [len(s.candidates) for s in res.steps] == [0, 5, 4, 3, 2]

    # baselines in the same harness
    assert drop_last_order(6, 1)[:3] == [("decoder", 5), ("decoder", 4), ("decoder", 3)]
    bi_order, bi = block_influence_order(ev, protect_first=1)
    assert all(bi[i] < 1e-6 for i in IDENTITY) and all(bi[i] > 1e-3 for i in IMPORTANT)
    assert {b for _, b in bi_order[:3]} == IDENTITY
    assert {b for _, b in sleb_order(ev, 3, protect_first=1)} == IDENTITY
    drop3 = ev.evaluate(decoder_skip=[5, 4, 3]).score
    assert drop3 < 1.0, "drop-last-3 removes the important block 3"

    plan = new_plan(vlm.identity(), res, {"source": "test"}, seed=0, metric="exact_match")
    assert plan.removed_decoder == [2, 4, 5]


def test_early_stopping_does_not_change_the_plan(planted):
    vlm, samples = planted
    ev = Evaluator(vlm, samples, get_metric("exact_match"), max_new_tokens=3)
    kw = dict(metric="exact_match", protect_first=1, min_relative_metric=0.99, max_new_tokens=3)
    fast = gm_skip_search(ev, SearchConfig(**kw, early_stop=True))
    slow = gm_skip_search(ev, SearchConfig(**kw, early_stop=False))
    assert [s.removed for s in fast.steps] == [s.removed for s in slow.steps]
    # the committed steps' numbers too, not only which blocks (a winner is never cut short)
    assert [(s.metric, s.nll) for s in fast.steps] == [(s.metric, s.nll) for s in slow.steps]
    assert fast.operating_step == slow.operating_step
    assert fast.forward_passes < slow.forward_passes
    assert any(c.early_stopped for s in fast.steps for c in s.candidates)


def _write_jsonl(tmp_path, samples):
    import cv2

    lines = []
    for s in samples:
        cv2.imwrite(str(tmp_path / f"{s.id}.png"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        lines.append(json.dumps({"image": f"{s.id}.png", "prompt": s.prompt,
                                 "answers": list(s.answers)}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "data.jsonl"


def test_cli_search_apply_eval_compare(planted, planted_dir, tmp_path, capsys):
    _, samples = planted
    data = _write_jsonl(tmp_path, samples)
    plan_path = tmp_path / "plan.json"
    common = ["--model", str(planted_dir), "--data", str(data), "--metric", "exact_match",
              "--max-new-tokens", "3", "--split", "all"]
    assert cli_main(["search", *common, "--out", str(plan_path),
                     "--min-relative-metric", "0.99"]) == 0
    plan = load_plan(plan_path)
    assert plan.data["schema"] == "gm_skip_plan" and plan.data["version"] == 1
    assert plan.removed_decoder == [2, 4, 5]
    assert plan.data["data"]["num_samples"] == len(samples)
    assert plan.model["weights_sha256"] and plan.model["config_sha256"]

    pruned = tmp_path / "pruned"
    assert cli_main(["apply", "--model", str(planted_dir), "--plan", str(plan_path),
                     "--out", str(pruned)]) == 0
    vlm2 = load_vlm(pruned)
    assert vlm2.num_decoder_blocks == 3
    capsys.readouterr()
    assert cli_main(["eval", "--model", str(pruned), *common[2:], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == 1.0
    # model + plan gives the same as the applied directory
    assert cli_main(["eval", *common, "--plan", str(plan_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["score"] == 1.0 and out["decoder_blocks"] == 3

    # compare (calib/held-out split of the same file)
    cmp_dir = tmp_path / "cmp"
    assert cli_main(["compare", *common[:-2], "--plan", str(plan_path), "--out", str(cmp_dir),
                     "--holdout-fraction", "0.5"]) == 0
    res = json.loads((cmp_dir / "compare.json").read_text())
    assert set(res["curves"]) == {"gm_skip", "drop_last", "shortgpt_bi", "sleb_nll"}
    gm3 = next(p for p in res["curves"]["gm_skip"] if p["k"] == 3)["metric"]
    drop3 = next(p for p in res["curves"]["drop_last"] if p["k"] == 3)["metric"]
    assert gm3 == 1.0 and drop3 < gm3
    assert (cmp_dir / "compare.png").stat().st_size > 1000
    # compare's fast evaluators (one shared mask) score exactly as a plain Evaluator
    from gm_skip_ros.data import open_dataset

    held = open_dataset(data, split="heldout", holdout_fraction=0.5)
    plain = Evaluator(load_vlm(planted_dir), held, get_metric("exact_match"), max_new_tokens=3)
    for name in ("gm_skip", "drop_last"):
        for p in res["curves"][name]:
            r = plain.evaluate(decoder_skip=[int(b.split(":")[1]) for b in p["removed"]])
            assert p["metric"] == r.score, (name, p["k"])
            assert p["nll"] == pytest.approx(r.nll, rel=1e-5), (name, p["k"])


def test_evaluators_of_one_model_share_one_mask(planted, tiny_llava_dir):
    vlm, samples = planted
    metric = get_metric("exact_match")
    a = Evaluator(vlm, samples[:2], metric, max_new_tokens=3)
    full = a.evaluate()
    with a.mask.skipping(decoder=[3]):
        # made while a skip is active: a mask of its own would take the pruned model as
        # its "unmasked" base; the shared one knows the original blocks
        b = FastEvaluator(vlm, samples[2:4], metric, max_new_tokens=3, mask=a.mask)
        c = Evaluator(vlm, samples[:2], metric, max_new_tokens=3, mask=a.mask)
    assert b.mask is a.mask and c.mask is a.mask
    assert a.mask.skipped == ((), ())
    assert c.evaluate().nll == full.nll
    assert c.evaluate(decoder_skip=[3]).nll != full.nll
    other = load_vlm(tiny_llava_dir)
    with pytest.raises(ValueError, match="another model"):
        Evaluator(other, samples[:1], metric, mask=a.mask)


def test_fast_evaluator_describes_what_it_does(planted, monkeypatch):
    vlm, samples = planted
    metric = get_metric("exact_match")
    ev = FastEvaluator(vlm, samples[:2], metric, max_new_tokens=3, batch_size=4)
    assert ev.describe() == {"mode": "fast", "vision_cache": True, "prefix_reuse": True,
                             "batch_size": 4, "batch_padding": False}
    ev = FastEvaluator(vlm, samples[:2], metric, max_new_tokens=3, cache_vision=False,
                       prefix_reuse=False, pad=True)
    assert ev.describe() == {"mode": "fast", "vision_cache": False, "prefix_reuse": False,
                             "batch_size": 8, "batch_padding": True}
    # asked for, but the model cannot take cached features: reported off
    monkeypatch.setattr(vlm.model, "_supports_mm_encoder_outputs", lambda: False,
                        raising=False)
    ev = FastEvaluator(vlm, samples[:2], metric, max_new_tokens=3, cache_vision=True)
    assert ev.describe()["vision_cache"] is False


def test_plan_refused_for_another_model(planted, tiny_llava_dir, tmp_path, capsys):
    vlm, samples = planted
    ev = Evaluator(vlm, samples[:2], get_metric("exact_match"), max_new_tokens=2)
    res = gm_skip_search(ev, SearchConfig(metric="exact_match", max_steps=1, max_new_tokens=2))
    p = tmp_path / "p.json"
    new_plan(vlm.identity(), res, {}, 0, "exact_match").save(p)
    with pytest.raises(GmSkipError, match="another model"):
        load_pruned_vlm(tiny_llava_dir, p)
    rc = cli_main(["apply", "--model", str(tiny_llava_dir), "--plan", str(p),
                   "--out", str(tmp_path / "x")])
    assert rc == 2 and not (tmp_path / "x").exists()
    assert "another model" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["search", "--model", "/nonexistent", "--data", "{data}", "--out", "{tmp}/p.json"],
     "does not exist"),
    (["search", "--model", "{model}", "--data", "{tmp}/empty.jsonl", "--out", "{tmp}/p.json"],
     "no usable samples"),
    (["search", "--model", "{model}", "--data", "{data}", "--metric", "bleu9",
      "--out", "{tmp}/p.json"], "unknown metric"),
    (["search", "--model", "{model}", "--data", "{data}", "--protect-first", "6",
      "--split", "all", "--out", "{tmp}/p.json"], "nothing is eligible"),
    (["apply", "--model", "{model}", "--plan", "{tmp}/missing.json", "--out", "{tmp}/o"],
     "does not exist"),
    (["eval", "--model", "{tmp}", "--data", "{data}"], "config.json is missing"),
])
def test_bad_input_one_line_exit_2(argv, needle, tiny_llava_dir, planted, tmp_path, capsys):
    _, samples = planted
    data = _write_jsonl(tmp_path, samples[:2])
    (tmp_path / "empty.jsonl").write_text("")
    argv = [a.format(data=data, tmp=tmp_path, model=tiny_llava_dir) for a in argv]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.json").exists() and not (tmp_path / "o").exists()
