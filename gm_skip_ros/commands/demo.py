"""gm-skip demo: the whole job on a fresh machine (``make demo``).

1. model: the shipped demo VLM (models/demo_vlm), or ``--model DIR``; ``--tiny`` builds a
   tiny random Llava on the spot (plumbing check only: its metric landscape is flat);
2. data: a calibration bag and a held-out bag rendered by the driving-scene generator
   (rosbag2, mcap), read back through the same bag reader users point at their own bags;
3. GM-Skip search on the calibration bag -> plan.json;
4. GM-Skip vs baselines on the held-out bag -> compare.png / compare.json;
5. plan applied -> pruned model directory;
6. full vs pruned latency, interleaved in one run on the same backend;
7. a summary table (blocks kept, held-out metric, latency, speed-up) -> summary.json.
"""
from __future__ import annotations

import time

from gm_skip_ros.commands._common import (
    add_threads_arg, apply_threads, describe_data, quiet_transformers,
)


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole job: bags, search, plot, prune, latency",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    p.add_argument("--model", default=None, help="model directory (default: the demo VLM)")
    p.add_argument("--tiny", action="store_true",
                   help="use a tiny random model built on the spot (plumbing check)")
    p.add_argument("--calib-frames", type=int, default=128, help="calibration bag frames")
    p.add_argument("--heldout-frames", type=int, default=200, help="held-out bag frames")
    p.add_argument("--seed", type=int, default=7, help="seed of the calibration bag; the "
                   "held-out bag uses seed+1000 (the demo model trained on seed 0)")
    p.add_argument("--metric", default="accuracy", choices=("accuracy", "exact_match", "cider"))
    p.add_argument("--balance", type=float, default=0.5, help="score-sparsity balance")
    p.add_argument("--min-relative-metric", type=float, default=0.95)
    p.add_argument("--protect-first", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"),
                   help="latency backend (default torch)")
    p.add_argument("--reps", type=int, default=15, help="latency repetitions per model")
    p.add_argument("--latency-tokens", type=int, default=8,
                   help="decode this many tokens per latency run (eos ignored)")
    add_threads_arg(p)
    p.set_defaults(func=run)


def _stage(msg: str) -> float:
    print(f"\n== {msg}", flush=True)
    return time.perf_counter()


def run(args) -> int:
    import statistics
    from pathlib import Path

    import torch
    from tqdm.auto import tqdm

    from gm_skip_ros.data import open_dataset
    from gm_skip_ros.data.rosbag import write_scene_bag
    from gm_skip_ros.io import atomic_write_json
    from gm_skip_ros.models import load_vlm
    from gm_skip_ros.search.compare import compare_methods, format_table, plot_curves, save_result
    from gm_skip_ros.search.fast import FastEvaluator
    from gm_skip_ros.search.greedy import SearchConfig, gm_skip_search
    from gm_skip_ros.search.metrics import get_metric
    from gm_skip_ros.search.plan import apply_plan, new_plan, write_pruned_model

    quiet_transformers()
    apply_threads(args)
    t_all = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = "caption" if args.metric == "cider" else "classify"

    t = _stage("model")
    if args.tiny:
        from gm_skip_ros.models.tiny import build_tiny_vlm

        model_dir = build_tiny_vlm("llava", out / "tiny_model", n_layers=8)
        print(f"tiny random Llava built at {model_dir} (plumbing check: random weights)")
    elif args.model:
        model_dir = Path(args.model)
    else:
        from gm_skip_ros.models.demo import default_model_dir

        model_dir = default_model_dir()
    vlm = load_vlm(model_dir)
    n_dec = vlm.num_decoder_blocks
    print(f"{model_dir}: {vlm.identity()['architecture']}, {n_dec} decoder blocks, "
          f"{vlm.num_vision_blocks} vision blocks ({time.perf_counter() - t:.1f} s)")

    t = _stage("bags (rosbag2, mcap)")
    bags = {}
    for name, n, seed in (("calib", args.calib_frames, args.seed),
                          ("heldout", args.heldout_frames, args.seed + 1000)):
        bags[name] = write_scene_bag(out / f"{name}_bag", n=n, seed=seed, storage="mcap",
                                     overwrite=True)
        print(f"{name}: {bags[name]} ({n} frames 640x480, seed {seed})")
    calib = open_dataset(bags["calib"], task=task)
    held = open_dataset(bags["heldout"], task=task)
    print(f"read back {len(calib)} calibration and {len(held)} held-out samples "
          f"({time.perf_counter() - t:.1f} s)")

    t = _stage(f"GM-Skip search on the calibration bag ({args.metric})")
    metric = get_metric(args.metric)
    cfg = SearchConfig(metric=args.metric, balance=args.balance,
                       protect_first=min(args.protect_first, n_dec - 1),
                       min_relative_metric=args.min_relative_metric,
                       max_new_tokens=args.max_new_tokens, full_curve=True)
    # The exact speed-ups of `gm-skip search` (vision cache, prefix reuse, batching, early
    # stop): same plan as the plain search, a few times faster.
    calib_ev = FastEvaluator(vlm, calib, metric, max_new_tokens=args.max_new_tokens)
    bar = tqdm(desc="candidates", unit="cand")

    def progress(step, block, cand):
        bar.set_postfix_str(f"step {step} try {block[0]}:{block[1]} -> {cand.metric:.3f}")
        bar.update(1)

    result = gm_skip_search(calib_ev, cfg, progress=progress)
    bar.close()
    info = describe_data(bags["calib"], task, calib, "all")
    plan = new_plan(vlm.identity(), result, info, args.seed, args.metric)
    # what the evaluator actually did (the vision cache is off where the family forbids it)
    plan.data["cost"]["evaluator"] = {**calib_ev.describe(), "early_stop": cfg.early_stop}
    plan.save(out / "plan.json")
    from gm_skip_ros.commands.search import print_summary

    print_summary(plan)

    t = _stage("GM-Skip vs baselines on the held-out bag")
    held_ev = FastEvaluator(vlm, held, metric, max_new_tokens=args.max_new_tokens,
                            mask=calib_ev.mask)  # one mask per model
    ks = list(range(0, len(plan.steps)))
    cmp = compare_methods(plan, calib_ev, held_ev, ks, cfg.protect_first)
    save_result(cmp, out / "compare.json")
    plot_curves(cmp, args.metric, out / "compare.png",
                title=f"{model_dir.name}: held-out {args.metric} vs blocks skipped")
    print(format_table(cmp, args.metric))
    gm_curve = {p["k"]: p["metric"] for p in cmp["curves"]["gm_skip"]}

    t = _stage("apply the plan (blocks physically removed)")
    pruned_dir = out / "pruned_model"
    pruned = load_vlm(model_dir)
    apply_plan(pruned, plan)
    write_pruned_model(pruned, plan, pruned_dir)
    print(f"{pruned_dir}: {pruned.num_decoder_blocks}/{n_dec} decoder blocks "
          f"(removed {plan.removed_decoder})")

    t = _stage(f"latency, full vs pruned, interleaved ({args.backend}, "
               f"{torch.get_num_threads()} threads)")
    from gm_skip_ros.runtime import create_backend

    full_b = create_backend(args.backend, model_dir, None, vlm=load_vlm(model_dir)
                            if args.backend == "torch" else None)
    prun_b = create_backend(args.backend, model_dir, out / "plan.json",
                            vlm=pruned if args.backend == "torch" else None)
    image, prompt = held[0].image, held[0].prompt
    times = {"full": [], "pruned": []}
    for _ in range(3):  # warm-up
        full_b.generate(image, prompt, args.latency_tokens, ignore_eos=True)
        prun_b.generate(image, prompt, args.latency_tokens, ignore_eos=True)
    for _ in tqdm(range(args.reps), desc="latency reps"):
        for name, b in (("full", full_b), ("pruned", prun_b)):
            times[name].append(b.generate(image, prompt, args.latency_tokens,
                                          ignore_eos=True).timings)
    med = {k: {f: statistics.median(getattr(x, f) for x in v)
               for f in ("preprocess_ms", "vision_ms", "prefill_ms", "decode_ms", "total_ms")}
           for k, v in times.items()}

    op = plan.operating_step
    kept = n_dec - len(plan.removed_decoder)
    summary = {
        "model": str(model_dir), "metric": args.metric, "backend": args.backend,
        "decoder_blocks": {"full": n_dec, "pruned": kept},
        "removed_decoder": plan.removed_decoder,
        "heldout_metric": {"full": gm_curve.get(0), "pruned": gm_curve.get(op)},
        "calib_metric": {"full": plan.steps[0]["metric"], "pruned": plan.steps[op]["metric"]},
        "latency_ms": med, "reps": args.reps, "latency_tokens": args.latency_tokens,
        "speedup": med["full"]["total_ms"] / med["pruned"]["total_ms"],
        "latency_reduction": 1 - med["pruned"]["total_ms"] / med["full"]["total_ms"],
        "ideal_ratio_blocks_kept": kept / n_dec,
        "search_wall_s": plan.data["cost"]["wall_s"],
        "wall_s": time.perf_counter() - t_all,
    }
    atomic_write_json(out / "summary.json", summary)
    print("\n== summary")
    print(f"{'model':>8} {'blocks kept':>12} {'held-out ' + args.metric:>18} "
          f"{'latency ms':>11} {'decode ms':>10} {'speed-up':>9}")
    for name in ("full", "pruned"):
        m = summary["heldout_metric"][name]
        print(f"{name:>8} {summary['decoder_blocks'][name]:>5}/{n_dec:<6} {m:>18.3f} "
              f"{med[name]['total_ms']:>11.1f} {med[name]['decode_ms']:>10.1f} "
              f"{med['full']['total_ms'] / med[name]['total_ms']:>8.2f}x")
    print(f"latency reduction {100 * summary['latency_reduction']:.1f}% (decoder blocks kept "
          f"{kept}/{n_dec} = {kept / n_dec:.2f}); search {summary['search_wall_s']:.0f} s; "
          f"whole demo {summary['wall_s']:.0f} s")
    print(f"outputs in {out}: plan.json, compare.png, compare.json, pruned_model/, summary.json")
    return 0
