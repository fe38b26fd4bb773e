"""Search at scale: the optimised, resumed and Ray searches give the plain search's plan.

Models: the planted tiny Llava of test_search (identity blocks {2, 4, 5}), and a tiny
random Llava with the demo model's real processor (BPE tokenizer, chat template, CLIP
image processor) on rendered driving scenes.
"""
import json
import subprocess
import sys

import pytest
import torch

from gm_skip_ros.cli import main as cli_main
from gm_skip_ros.data.sample import Sample
from gm_skip_ros.models import load_vlm
from gm_skip_ros.search.evaluate import Evaluator
from gm_skip_ros.search.fast import FastEvaluator
from gm_skip_ros.search.greedy import SearchConfig, gm_skip_search
from gm_skip_ros.search.metrics import get_metric
from gm_skip_ros.search.resume import fingerprint, load_state, save_state, state_path
from test_search import PROMPT, _images, _plant, _write_jsonl

KW = dict(metric="exact_match", protect_first=1, min_relative_metric=0.99, max_new_tokens=3)


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    from gm_skip_ros.models.tiny import build_tiny_vlm

    d = build_tiny_vlm("llava", tmp_path_factory.mktemp("planted_scale") / "m", seed=3)
    vlm = load_vlm(d)
    _plant(vlm.model)
    vlm.model.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def planted(planted_dir):
    vlm = load_vlm(planted_dir)
    probe = [Sample(im, PROMPT, ("x",), id=f"s{i}") for i, im in enumerate(_images(10))]
    preds = Evaluator(vlm, probe, get_metric("exact_match"), max_new_tokens=3).evaluate() \
        .predictions
    return vlm, [Sample(s.image, PROMPT, (p,), id=s.id) for s, p in zip(probe, preds)]


def _same_plan(a, b, exact_nll=True):
    """Committed steps equal; every candidate both evaluated in full has equal numbers."""
    assert [s.removed for s in a.steps] == [s.removed for s in b.steps]
    assert [s.metric for s in a.steps] == [s.metric for s in b.steps]
    if exact_nll:
        assert [s.nll for s in a.steps] == [s.nll for s in b.steps]
    else:
        assert [s.nll for s in a.steps] == pytest.approx([s.nll for s in b.steps], rel=1e-5)
    assert a.operating_step == b.operating_step
    for sa, sb in zip(a.steps, b.steps):
        assert [c.block for c in sa.candidates] == [c.block for c in sb.candidates]
        for ca, cb in zip(sa.candidates, sb.candidates):
            if not ca.early_stopped and not cb.early_stopped:
                assert ca.metric == cb.metric
                assert ca.nll == (cb.nll if exact_nll else pytest.approx(cb.nll, rel=1e-5))


@pytest.fixture(scope="module")
def plain_results(planted):
    """The plain search's result per window (computed once per module)."""
    vlm, samples = planted
    cache = {}

    def get(window):
        if window not in cache:
            cache[window] = gm_skip_search(
                Evaluator(vlm, samples, get_metric("exact_match"), max_new_tokens=3),
                SearchConfig(**KW, window=window, early_stop=False))
        return cache[window]
    return get


@pytest.mark.parametrize("batch_size,window", [
    (4, None),
    pytest.param(1, None, marks=pytest.mark.slow),
    pytest.param(4, 3, marks=pytest.mark.slow),
])
def test_fast_search_gives_the_plain_plan(planted, plain_results, batch_size, window):
    vlm, samples = planted
    metric = get_metric("exact_match")
    cfg = dict(KW, window=window)
    plain = plain_results(window)
    fe = FastEvaluator(vlm, samples, metric, max_new_tokens=3, batch_size=batch_size)
    fast = gm_skip_search(fe, SearchConfig(**cfg))
    _same_plan(plain, fast)
    assert fast.steps[3].removed == ["decoder:5", "decoder:4", "decoder:2"]
    # every speed-up source did something, and is recorded per step
    tot = {k: sum(s.speedups.get(k, 0) for s in fast.steps)
           for k in ("vision_passes_saved", "prefix_block_calls_saved",
                     "early_stopped_candidates", "model_calls", "sample_passes")}
    assert tot["vision_passes_saved"] > 0 and tot["prefix_block_calls_saved"] > 0
    assert tot["early_stopped_candidates"] > 0
    if batch_size > 1:
        assert tot["model_calls"] < tot["sample_passes"]
    # per-sample predictions of one configuration equal the plain ones, batched or not
    ref = Evaluator(vlm, samples, metric, max_new_tokens=3).evaluate(decoder_skip=[3])
    got = fe.evaluate(decoder_skip=[3])
    assert got.predictions == ref.predictions and got.nll == ref.nll


def test_prefix_replay_is_used_only_for_the_step_structure(planted):
    vlm, samples = planted
    fe = FastEvaluator(vlm, samples[:4], get_metric("exact_match"), max_new_tokens=3)
    ref = Evaluator(vlm, samples[:4], get_metric("exact_match"), max_new_tokens=3)
    fe.begin_step([5], [], [("decoder", 4), ("decoder", 3), ("decoder", 1)])
    assert fe._replay_depth([5, 4], []) == 4       # blocks 0..3 replayed
    assert fe._replay_depth([5, 1], []) == 1
    assert fe._replay_depth([4], []) == 0          # not base + one block: no replay
    assert fe._replay_depth([5, 4, 3], []) == 0
    for skip in ([5, 4], [5, 1], [4], [5, 4, 3]):
        a, b = fe.evaluate(skip), ref.evaluate(skip)
        assert (a.predictions, a.nll) == (b.predictions, b.nll)


@pytest.mark.slow
def test_padded_batches_give_the_plain_plan(planted):
    """Prompts of two lengths: padded batches (left for generation, right for scoring)."""
    vlm, samples = planted
    long_prompt = "what is the main object on the road ahead ?"
    probe = [Sample(s.image, long_prompt if i % 2 else PROMPT, ("x",), id=s.id)
             for i, s in enumerate(samples)]
    metric = get_metric("exact_match")
    preds = Evaluator(vlm, probe, metric, max_new_tokens=3).evaluate().predictions
    mixed = [Sample(s.image, s.prompt, (p,), id=s.id) for s, p in zip(probe, preds)]
    plain = gm_skip_search(Evaluator(vlm, mixed, metric, max_new_tokens=3),
                           SearchConfig(**KW, early_stop=False))
    fe = FastEvaluator(vlm, mixed, metric, max_new_tokens=3, batch_size=4, pad=True)
    lens = [{fe._len(i, "gen") for i in b} for b in fe._batches]
    assert any(len(x) > 1 for x in lens), "some batch mixes prompt lengths"
    fast = gm_skip_search(fe, SearchConfig(**KW))
    _same_plan(plain, fast, exact_nll=False)
    ref = Evaluator(vlm, mixed, metric, max_new_tokens=3).evaluate(decoder_skip=[3])
    got = fe.evaluate(decoder_skip=[3])
    assert got.predictions == ref.predictions
    assert got.nll == pytest.approx(ref.nll, rel=1e-5)


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    """A tiny random Llava with the demo model's processor, and rendered scene samples."""
    from gm_skip_ros.data.scenes import generate_scenes, sample_from_truth
    from gm_skip_ros.training.train_demo import (
        TINY, DemoConfig, build_model, build_processor, build_tokenizer,
    )

    cfg = DemoConfig(**{**TINY, "text_layers": 5, "image_size": 48})
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = build_model(cfg, tok).eval()
    d = tmp_path_factory.mktemp("demo_like") / "m"
    model.save_pretrained(d)
    build_processor(tok, cfg).save_pretrained(d)
    samples = [sample_from_truth(im, t, task, id=f"f{i}-{task}")
               for i, (im, t) in enumerate(generate_scenes(6, seed=5, width=96, height=72))
               for task in ("classify", "caption")]
    return load_vlm(d), samples


@pytest.mark.slow
def test_fast_search_with_a_real_processor(demo_like):
    vlm, samples = demo_like
    metric = get_metric("accuracy")
    cfg = dict(metric="accuracy", protect_first=1, max_steps=3, max_new_tokens=4,
               min_relative_metric=0.0)
    plain = gm_skip_search(Evaluator(vlm, samples, metric, max_new_tokens=4),
                           SearchConfig(**cfg, early_stop=False))
    fe = FastEvaluator(vlm, samples, metric, max_new_tokens=4, batch_size=4)
    assert fe._vision_ok and len(fe._batches) < len(samples)
    fast = gm_skip_search(fe, SearchConfig(**cfg))
    _same_plan(plain, fast)
    assert len(fast.steps) == 4


# ------------------------------------------------------------------------------ resume

class _Killed(Exception):
    pass


def test_resume_after_a_kill_gives_the_uninterrupted_plan(planted, plain_results, tmp_path):
    vlm, samples = planted
    metric = get_metric("exact_match")
    cfg = SearchConfig(**KW)
    full = plain_results(None)
    from dataclasses import asdict

    fp = fingerprint(vlm.identity(), {"sha256": "d", "num_samples": len(samples)},
                     asdict(cfg), "exact_match")
    path = state_path(tmp_path / "plan.json")
    assert path.name == "plan.state.json"

    def kill_after_2(steps, wall, passes):
        save_state(path, fp, steps, wall, passes)
        if len(steps) == 3:
            raise _Killed

    with pytest.raises(_Killed):
        gm_skip_search(FastEvaluator(vlm, samples, metric, max_new_tokens=3), cfg,
                       on_step=kill_after_2)
    state = load_state(path, fp)
    assert [s["step"] for s in state["steps"]] == [0, 1, 2]
    resumed = gm_skip_search(FastEvaluator(vlm, samples, metric, max_new_tokens=3), cfg,
                             state=state)
    _same_plan(full, resumed)
    # the resumed steps 0..2 are the saved ones (not recomputed)
    assert resumed.steps[1].wall_s == state["steps"][1]["wall_s"]


@pytest.mark.slow
def test_cli_resume_and_refusals(planted, planted_dir, tmp_path, capsys, monkeypatch):
    _, samples = planted
    data = _write_jsonl(tmp_path, samples)
    common = ["search", "--model", str(planted_dir), "--data", str(data), "--metric",
              "exact_match", "--max-new-tokens", "3", "--split", "all",
              "--min-relative-metric", "0.99"]
    ref_plan = tmp_path / "ref.json"
    assert cli_main([*common, "--out", str(ref_plan)]) == 0
    out = capsys.readouterr().out
    assert "saved:" in out and "vision-encoder passes" in out and "prefix block calls" in out
    ref = json.loads(ref_plan.read_text())
    assert ref["cost"]["evaluator"]["mode"] == "fast"
    assert ref["cost"]["evaluator"] == {"mode": "fast", "vision_cache": True,
                                        "prefix_reuse": True, "batch_size": 8,
                                        "batch_padding": False, "early_stop": True}
    assert ref["cost"]["per_step"][1]["speedups"]["prefix_block_calls_saved"] > 0

    import gm_skip_ros.search.resume as resume

    real_save = resume.save_state
    calls = []

    def save_then_die(*a, **k):
        real_save(*a, **k)
        calls.append(1)
        if len(calls) == 2:  # after step 1
            raise _Killed

    plan = tmp_path / "plan.json"
    monkeypatch.setattr(resume, "save_state", save_then_die)
    with pytest.raises(_Killed):
        cli_main([*common, "--out", str(plan)])
    monkeypatch.setattr(resume, "save_state", real_save)
    st = tmp_path / "plan.state.json"
    assert st.exists() and not plan.exists()
    capsys.readouterr()

    # without --resume: refused, the state is kept
    assert cli_main([*common, "--out", str(plan)]) == 2
    assert "--resume" in capsys.readouterr().err
    # changed search options / data: refused with one line
    assert cli_main([*common, "--out", str(plan), "--resume", "--balance", "0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot resume" in err and "balance" in err and len(err.splitlines()) == 1
    (tmp_path / "other").mkdir()
    data2 = _write_jsonl(tmp_path / "other", samples[:5])
    args2 = [a if a != str(data) else str(data2) for a in common]
    assert cli_main([*args2, "--out", str(plan), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot resume" in err and "data" in err and len(err.splitlines()) == 1
    # the specific differing field, not the generic "model, data and options" advice
    assert f"the data.num_samples differs (saved {len(samples)}, now 5)" in err

    # resumed (plain evaluator this time: speed options may change) = uninterrupted
    assert cli_main([*common, "--out", str(plan), "--resume", "--plain"]) == 0
    assert "resuming from" in capsys.readouterr().out
    got = json.loads(plan.read_text())
    assert not st.exists()
    for key in ("removal_order", "operating_point"):
        assert got[key] == ref[key]
    assert [(s["removed"], s["metric"], s["nll"]) for s in got["steps"]] == \
        [(s["removed"], s["metric"], s["nll"]) for s in ref["steps"]]


# ------------------------------------------------------------------------------ Ray

def test_plain_search_does_not_import_ray(tiny_llava_dir, tmp_path):
    samples = [Sample(im, PROMPT, ("car",), id=f"s{i}") for i, im in enumerate(_images(2))]
    data = _write_jsonl(tmp_path, samples)
    code = (
        "import sys\n"
        "import gm_skip_ros.search, gm_skip_ros.search.greedy, gm_skip_ros.search.fast\n"
        "import gm_skip_ros.search.resume, gm_skip_ros.search.distributed\n"
        "import gm_skip_ros.commands.search\n"
        "from gm_skip_ros.cli import main\n"
        f"rc = main(['search', '--model', {str(tiny_llava_dir)!r}, '--data', {str(data)!r},"
        f" '--split', 'all', '--max-steps', '1', '--max-new-tokens', '2',"
        f" '--out', {str(tmp_path / 'p.json')!r}])\n"
        "assert rc == 0, rc\n"
        "print('RAY' if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) "
        "else 'NO-RAY')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "NO-RAY"


@pytest.mark.slow
def test_ray_search_gives_the_single_process_plan(planted, planted_dir, tmp_path, capsys):
    pytest.importorskip("ray")
    _, samples = planted
    data = _write_jsonl(tmp_path, samples)
    common = ["search", "--model", str(planted_dir), "--data", str(data), "--metric",
              "exact_match", "--max-new-tokens", "3", "--split", "all",
              "--min-relative-metric", "0.99", "--threads-per-worker", "1"]
    assert cli_main([*common, "--out", str(tmp_path / "local.json")]) == 0
    a = json.loads((tmp_path / "local.json").read_text())
    for split in ("candidates", "samples"):
        out = tmp_path / f"ray-{split}.json"
        assert cli_main([*common, "--out", str(out), "--ray-address", "local",
                         "--ray-workers", "2", "--ray-split", split]) == 0
        assert "Ray: 2 workers ready" in capsys.readouterr().out
        b = json.loads(out.read_text())
        assert b["cost"]["evaluator"]["ray"]["workers"] == 2
        assert b["cost"]["evaluator"]["ray"]["split"] == split
        assert a["removal_order"] == b["removal_order"] == [
            "decoder:5", "decoder:4", "decoder:2", "decoder:3"]
        assert a["operating_point"] == b["operating_point"]
        for sa, sb in zip(a["steps"], b["steps"]):
            assert (sa["removed"], sa["metric"]) == (sb["removed"], sb["metric"])
            assert sa["nll"] == pytest.approx(sb["nll"], rel=1e-5)
            for ca, cb in zip(sa["candidates"], sb["candidates"]):
                assert ca["block"] == cb["block"]
                if not (ca["early_stopped"] or cb["early_stopped"]):
                    assert ca["metric"] == cb["metric"]
        assert b["steps"][1]["speedups"]["ray_workers"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("split", ["samples", "candidates"])
def test_ray_runner_takes_per_sample_mean_from_the_metric(planted, planted_dir, split):
    """cider is not a mean of per-sample scores: the runner must not early-stop it nor merge
    shards as a per-sample mean (it once defaulted to per_sample_mean=True and the sample
    split then iterated over the workers' per_sample=None)."""
    import inspect

    from gm_skip_ros.search.distributed import RayRunner

    pytest.importorskip("ray")
    assert "per_sample_mean" not in inspect.signature(RayRunner).parameters
    _, samples = planted
    samples = samples[:6]
    vlm = load_vlm(planted_dir)
    kw = dict(KW, metric="cider", max_steps=2, min_relative_metric=0.0)
    ev_kw = dict(max_new_tokens=3, batch_size=4)
    ref = gm_skip_search(FastEvaluator(vlm, samples, get_metric("cider"), **ev_kw),
                         SearchConfig(**kw, early_stop=True))
    # a private local Ray instance (loopback only), two real actors
    with RayRunner(planted_dir, samples, "cider", workers=2, ev_kwargs=ev_kw,
                   expected_identity=vlm.identity(), split=split) as runner:
        assert runner.per_sample_mean is False
        got = gm_skip_search(FastEvaluator(vlm, samples, get_metric("cider"), **ev_kw),
                             SearchConfig(**kw, early_stop=True), runner=runner)
    assert not any(c.early_stopped for s in got.steps for c in s.candidates)
    _same_plan(ref, got, exact_nll=False)
    with RayRunner(planted_dir, samples, "exact_match", workers=2, ev_kwargs=ev_kw,
                   split=split) as runner:
        assert runner.per_sample_mean is True


def test_cli_plan_records_the_vision_cache_the_evaluator_used(planted, planted_dir, tmp_path,
                                                              monkeypatch):
    """The plan's cost.evaluator says what happened, not what was asked: a model that cannot
    take cached vision features is searched (and recorded) without the cache."""
    _, samples = planted
    data = _write_jsonl(tmp_path, samples[:4])
    cls = type(load_vlm(planted_dir).model)
    monkeypatch.setattr(cls, "_supports_mm_encoder_outputs", lambda self: False, raising=False)
    plan = tmp_path / "plan.json"
    assert cli_main(["search", "--model", str(planted_dir), "--data", str(data), "--metric",
                     "exact_match", "--max-new-tokens", "3", "--split", "all", "--max-steps",
                     "1", "--out", str(plan)]) == 0
    got = json.loads(plan.read_text())
    assert got["cost"]["evaluator"]["vision_cache"] is False
    assert not any(s.get("speedups", {}).get("vision_passes_saved") for s in got["steps"])
