#!/usr/bin/env python3
"""Benchmark of the GM-Skip search: plain (reference) vs optimised, and Ray scaling.

    gm-skip make-bag --out /tmp/calib --frames 40 --seed 1
    python scripts/bench_search.py --data /tmp/calib --split all [--model DIR] \
        [--max-steps 3] [--ray-workers 1,2] [--ablate] [--out bench_search.json]

Runs, in one process and on the same samples: the plain search (``gm-skip search
--plain``: generate() + a separate NLL forward per sample and candidate), the optimised
one (the default), optionally one run per speed-up source alone (``--ablate``), and the
optimised search with candidates on a local Ray cluster of N workers for each N. Checks
that every plan equals the plain plan (removal order, per-step metric and NLL) and prints
wall times. The Ray rows time the candidate-evaluation part (steps >= 1, after the
workers are up) and give the start-up separately. Not a test: numbers depend on the
machine; run it on an otherwise idle one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir (default: the demo VLM)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="all")
    ap.add_argument("--task", default="classify")
    ap.add_argument("--limit", type=int, default=None, help="use at most N samples")
    ap.add_argument("--metric", default="accuracy")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--max-steps", type=int, default=3)
    ap.add_argument("--window", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process/worker")
    ap.add_argument("--ray-workers", default="1,2", help="comma list; empty: no Ray runs")
    ap.add_argument("--ray-split", default="candidates", choices=("candidates", "samples"))
    ap.add_argument("--ablate", action="store_true", help="also time each speed-up alone")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from gm_skip_ros.commands._common import quiet_transformers
    from gm_skip_ros.data import open_dataset
    from gm_skip_ros.models import load_vlm
    from gm_skip_ros.search.evaluate import Evaluator
    from gm_skip_ros.search.fast import FastEvaluator
    from gm_skip_ros.search.greedy import SearchConfig, gm_skip_search
    from gm_skip_ros.search.metrics import get_metric

    quiet_transformers()
    torch.set_num_threads(args.threads)
    if args.model is None:
        from gm_skip_ros.models.demo import default_model_dir

        args.model = str(default_model_dir())
    samples = list(open_dataset(args.data, task=args.task,
                                split=None if args.split == "all" else args.split,
                                limit=args.limit))
    vlm = load_vlm(args.model, device=args.device)
    metric = get_metric(args.metric)
    base = dict(metric=args.metric, max_new_tokens=args.max_new_tokens,
                max_steps=args.max_steps, window=args.window, full_curve=True)
    print(f"model {args.model}: {vlm.num_decoder_blocks} decoder blocks; {len(samples)} "
          f"samples; max_steps {args.max_steps}; window {args.window}; threads {args.threads}")
    rows, plans = [], {}

    def record(name, res, extra=None):
        cand_s = sum(s.wall_s for s in res.steps[1:])
        rows.append({"run": name, "wall_s": round(res.wall_s, 2),
                     "candidate_eval_s": round(cand_s, 2),
                     "forward_passes": res.forward_passes,
                     "removal_order": res.removal_order, **(extra or {})})
        plans[name] = res
        print(f"{name:>28}: {res.wall_s:8.1f} s total, {cand_s:8.1f} s candidates, "
              f"{res.forward_passes:6d} passes, order {res.removal_order}", flush=True)

    ev = Evaluator(vlm, samples, metric, max_new_tokens=args.max_new_tokens)
    record("plain", gm_skip_search(ev, SearchConfig(**base, early_stop=False)))
    fast_kw = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    fe = FastEvaluator(vlm, samples, metric, **fast_kw)
    record("fast (all)", gm_skip_search(fe, SearchConfig(**base)))
    if args.ablate:
        only = {
            "early stop only": (dict(cache_vision=False, prefix_reuse=False, batch_size=1), True),
            "vision cache only": (dict(cache_vision=True, prefix_reuse=False, batch_size=1),
                                  False),
            "prefix reuse only": (dict(cache_vision=False, prefix_reuse=True, batch_size=1),
                                  False),
            "batching only": (dict(cache_vision=False, prefix_reuse=False,
                                   batch_size=args.batch_size), False),
        }
        for name, (kw, es) in only.items():
            e = FastEvaluator(vlm, samples, metric, max_new_tokens=args.max_new_tokens, **kw)
            record(name, gm_skip_search(e, SearchConfig(**base, early_stop=es)))

    workers = [int(w) for w in args.ray_workers.split(",") if w.strip()]
    for n in workers:
        from gm_skip_ros.search.distributed import RayRunner

        t0 = time.perf_counter()
        with RayRunner(vlm.model_dir, samples, args.metric, address="local", workers=n,
                       device=args.device, threads=args.threads,
                       ev_kwargs=fast_kw, expected_identity=vlm.identity(),
                       split=args.ray_split) as runner:
            startup = time.perf_counter() - t0
            res = gm_skip_search(fe, SearchConfig(**base), runner=runner)
        record(f"ray {args.ray_split} x{n}", res,
               {"ray_workers": n, "ray_startup_s": round(startup, 2)})

    ref = plans["plain"]
    ok = True
    for name, res in plans.items():
        same = ([s.removed for s in res.steps] == [s.removed for s in ref.steps]
                and [s.metric for s in res.steps] == [s.metric for s in ref.steps])
        same_nll = [s.nll for s in res.steps] == [s.nll for s in ref.steps]
        for r in rows:
            if r["run"] == name:
                r["plan_equal"], r["nll_bitwise_equal"] = same, same_nll
                r["speedup_vs_plain"] = round(ref.wall_s / res.wall_s, 2)
                r["candidate_speedup_vs_plain"] = round(
                    rows[0]["candidate_eval_s"] / max(r["candidate_eval_s"], 1e-9), 2)
        ok &= same
    print(f"\n{'run':>28} {'total s':>8} {'cand s':>8} {'x plain':>8} {'plan ==':>8} "
          f"{'nll ==':>7}")
    for r in rows:
        print(f"{r['run']:>28} {r['wall_s']:8.1f} {r['candidate_eval_s']:8.1f} "
              f"{r['speedup_vs_plain']:8.2f} {str(r['plan_equal']):>8} "
              f"{str(r['nll_bitwise_equal']):>7}")
    ray_rows = [r for r in rows if "ray_workers" in r]
    if len(ray_rows) > 1:
        r1 = ray_rows[0]
        for r in ray_rows[1:]:
            print(f"Ray x{r['ray_workers']} vs x{r1['ray_workers']}: candidate evaluation "
                  f"{r1['candidate_eval_s'] / r['candidate_eval_s']:.2f}x faster "
                  f"(ideal {r['ray_workers'] / r1['ray_workers']:.0f}x)")
    if args.out:
        from gm_skip_ros.io import atomic_write_json

        atomic_write_json(args.out, {"model": args.model, "samples": len(samples),
                                     "machine": {"cpus": os.cpu_count()},
                                     "args": vars(args), "runs": rows})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
