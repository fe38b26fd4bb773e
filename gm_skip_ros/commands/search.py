"""gm-skip search: the GM-Skip greedy search; writes a skip plan."""
from __future__ import annotations

from gm_skip_ros.commands._common import (
    add_data_args, add_metric_arg, add_model_args, add_threads_arg, apply_threads, data_info,
    load_data, load_model, quiet_transformers,
)


def register(sub) -> None:
    p = sub.add_parser("search", help="run the GM-Skip greedy search and write a skip plan",
                       description="Greedy metric-guided block skipping (GM-Skip): at each step "
                       "try skipping each eligible block (last to first), commit the one that "
                       "hurts the metric least; write every step to a plan file.")
    add_model_args(p)
    add_data_args(p, default_split="calib")
    add_metric_arg(p)
    p.add_argument("--out", required=True, metavar="PLAN.json", help="plan file to write")
    p.add_argument("--balance", type=float, default=0.5,
                   help="score-sparsity balance lambda in [0,1]: J=(1-l)*m/m0 + l*sparsity "
                   "(default 0.5)")
    p.add_argument("--protect-first", type=int, default=1,
                   help="never remove the first N decoder blocks (default 1)")
    p.add_argument("--window", type=int, default=None,
                   help="only the last N remaining blocks are candidates")
    p.add_argument("--target-sparsity", type=float, default=None,
                   help="stop when this fraction of blocks is removed")
    p.add_argument("--min-relative-metric", type=float, default=0.9,
                   help="stop when the metric falls below this fraction of the unpruned "
                   "model's (default 0.9)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N removals")
    p.add_argument("--secondary", default="nll", choices=("nll", "none"),
                   help="tie-break signal: answer NLL (default) or none")
    p.add_argument("--scope", default="decoder", choices=("decoder", "decoder+vision"),
                   help="which blocks are candidates (default decoder)")
    p.add_argument("--full-curve", action="store_true",
                   help="keep removing past --min-relative-metric to record the whole curve")
    p.add_argument("--no-early-stop", action="store_true",
                   help="evaluate every candidate on every sample")
    p.add_argument("--seed", type=int, default=0, help="seed recorded in the plan (default 0)")
    g = p.add_argument_group("speed (none of these changes the plan)")
    add_threads_arg(g)
    g.add_argument("--plain", action="store_true",
                   help="reference search: generate() + a separate NLL forward per sample and "
                   "candidate, no caching, no batching, no early stopping")
    g.add_argument("--batch-size", type=int, default=8,
                   help="samples per model call among samples of equal length; no padding "
                   "(default 8; 1 = no batching)")
    g.add_argument("--batch-padding", action="store_true",
                   help="also batch samples of different lengths with padding (left for "
                   "generation); equal up to float rounding, not bit for bit")
    g.add_argument("--no-vision-cache", action="store_true",
                   help="recompute the vision encoder for every candidate")
    g.add_argument("--no-prefix-reuse", action="store_true",
                   help="recompute the blocks before each candidate")
    g.add_argument("--resume", action="store_true",
                   help="continue from OUT's .state.json (written after every step) after an "
                   "interruption; refused when model, data or search options differ")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="evaluate candidates on Ray workers: 'local' (private cluster on this "
                   "machine), 'auto' (the running cluster) or ray://host:port")
    g.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="number of Ray workers (default: one per GPU, or one per "
                   "--threads-per-worker CPUs)")
    g.add_argument("--ray-split", default="candidates", choices=("candidates", "samples"),
                   help="what a Ray worker gets: whole candidates (default) or a shard of the "
                   "samples of every candidate (better with few candidates or many workers)")
    g.add_argument("--threads-per-worker", type=int, default=1, metavar="T",
                   help="torch threads of each Ray worker on CPU (default 1)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from gm_skip_ros.errors import GmSkipError
    from gm_skip_ros.search.greedy import SearchConfig, gm_skip_search
    from gm_skip_ros.search.metrics import get_metric
    from gm_skip_ros.search.plan import new_plan
    from gm_skip_ros.search.resume import fingerprint, load_state, save_state, state_path

    quiet_transformers()
    apply_threads(args)
    torch.manual_seed(args.seed)
    metric = get_metric(args.metric)
    cfg = SearchConfig(
        metric=args.metric, balance=args.balance, protect_first=args.protect_first,
        window=args.window, target_sparsity=args.target_sparsity,
        min_relative_metric=args.min_relative_metric, max_steps=args.max_steps,
        secondary=args.secondary, scope=args.scope, max_new_tokens=args.max_new_tokens,
        early_stop=not (args.no_early_stop or args.plain), full_curve=args.full_curve,
    )
    if not args.out.endswith(".json"):
        raise GmSkipError(f"--out {args.out!r}: the plan file name must end in .json")
    if args.ray_workers is not None and args.ray_workers < 1:
        raise GmSkipError(f"--ray-workers must be >= 1, got {args.ray_workers}")
    if args.ray_workers is not None and not args.ray_address:
        raise GmSkipError("--ray-workers needs --ray-address (local, auto or ray://host:port)")
    samples = load_data(args)
    vlm = load_model(args)
    cfg.validate(vlm.num_decoder_blocks, vlm.num_vision_blocks)
    info = data_info(args, samples, args.split)
    fp = fingerprint(vlm.identity(), info, asdict_cfg(cfg), args.metric)
    spath = state_path(args.out)
    state = None
    if args.resume and spath.exists():
        state = load_state(spath, fp)
        print(f"resuming from {spath} after step {state['steps'][-1]['step']}")
    elif args.resume:
        print(f"no search state at {spath}: starting from the beginning")
    elif spath.exists():
        raise GmSkipError(f"an interrupted search left {spath}: pass --resume to continue it, "
                          "or delete it to start over")
    ev_kwargs = dict(max_new_tokens=args.max_new_tokens, secondary=args.secondary)
    if not args.plain:
        ev_kwargs.update(cache_vision=not args.no_vision_cache,
                         prefix_reuse=not args.no_prefix_reuse, batch_size=args.batch_size,
                         pad=args.batch_padding)
    ev = make_evaluator(vlm, samples, metric, args.plain, ev_kwargs)
    runner = None
    if args.ray_address:
        from gm_skip_ros.search.distributed import RayRunner

        runner = RayRunner(
            vlm.model_dir, samples, args.metric, address=args.ray_address,
            workers=args.ray_workers, device=args.device, threads=args.threads_per_worker,
            load_kwargs=dict(trust_remote_code=args.trust_remote_code,
                             decoder_path=args.decoder_path, vision_path=args.vision_path),
            ev_kwargs=ev_kwargs, plain=args.plain, expected_identity=vlm.identity(),
            split=args.ray_split)
        print(f"Ray: {runner.workers} workers ready in {runner.startup_s:.1f} s")
    bar = tqdm(desc="gm-skip search", unit="cand", leave=False)

    def progress(step, block, cand):
        bar.set_postfix_str(f"step {step} {block[0]}:{block[1]} {args.metric}={cand.metric:.3f}")
        bar.update(1)

    def on_step(steps, wall_s, passes):
        save_state(spath, fp, steps, wall_s, passes)

    try:
        result = gm_skip_search(ev, cfg, progress=progress, runner=runner, state=state,
                                on_step=on_step)
    finally:
        bar.close()
        if runner is not None:
            runner.close()
    plan = new_plan(vlm.identity(), result, info, args.seed, args.metric)
    plan.data["cost"]["evaluator"] = describe_evaluator(args, ev, runner)
    plan.save(args.out)
    spath.unlink(missing_ok=True)
    print_summary(plan)
    print(f"plan written to {args.out}")
    return 0


def asdict_cfg(cfg) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


def make_evaluator(vlm, samples, metric, plain: bool, ev_kwargs: dict):
    if plain:
        from gm_skip_ros.search.evaluate import Evaluator

        return Evaluator(vlm, samples, metric, **ev_kwargs)
    from gm_skip_ros.search.fast import FastEvaluator

    return FastEvaluator(vlm, samples, metric, **ev_kwargs)


def describe_evaluator(args, ev, runner) -> dict:
    """What the search ran with (FastEvaluator.describe: the speed-ups it actually used, not
    the ones asked for), plus early stopping and the Ray pool."""
    if args.plain:
        d = {"mode": "plain"}
    else:
        d = {**ev.describe(), "early_stop": not args.no_early_stop}
    if runner is not None:
        d["ray"] = {"address": args.ray_address, "workers": runner.workers,
                    "split": args.ray_split,
                    "threads_per_worker": args.threads_per_worker,
                    "startup_s": round(runner.startup_s, 2)}
    return d


_SOURCES = (("vision_passes_saved", "vision"), ("prefix_block_calls_saved", "prefix blk"),
            ("early_stopped_candidates", "early cand"),
            ("samples_skipped_early_stop", "early smp"), ("model_calls", "calls"))


def print_summary(plan) -> None:
    n = plan.model["num_decoder_blocks"]
    print(f"{'step':>4} {'removed':>14} {'kept':>5} {'metric':>8} {'rel':>6} {'nll':>7} "
          f"{'J':>6} {'cands':>5} {'passes':>6} {'wall_s':>7}  speed-ups (saved)")
    for s in plan.steps:
        last = s["removed"][-1] if s["removed"] else "-"
        mark = " <- operating point" if s["step"] == plan.operating_step else ""
        mark += "" if s["meets_min_metric"] else " (below min metric)"
        sp = s.get("speedups") or {}
        src = ", ".join(f"{label} {sp[k]}" for k, label in _SOURCES if sp.get(k))
        print(f"{s['step']:>4} {last:>14} {s['decoder_blocks_kept']:>2}/{n:<2} "
              f"{s['metric']:8.4f} {s['relative_metric']:6.3f} {s['nll']:7.4f} "
              f"{s['balanced']:6.3f} {len(s['candidates']):>5} {s['forward_passes']:>6} "
              f"{s['wall_s']:7.1f}  {src or '-'}{mark}")
    c = plan.data["cost"]
    tot: dict = {}
    for s in plan.steps:
        for k, v in (s.get("speedups") or {}).items():
            if isinstance(v, (int, float)) and k != "ray_workers":
                tot[k] = tot.get(k, 0) + v
    ev = c.get("evaluator", {})
    print(f"search: {c['wall_s']:.1f} s, {c['forward_passes']} forward passes (sample passes "
          f"incl. prefix captures), evaluator {ev.get('mode', '?')}"
          + (f", Ray {ev['ray']['workers']} workers" if ev.get("ray") else ""))
    if tot:
        print("saved: " + ", ".join(
            f"{label} {tot[k]}" for k, label in (
                ("vision_passes_saved", "vision-encoder passes"),
                ("prefix_block_calls_saved", "prefix block calls"),
                ("early_stopped_candidates", "early-stopped candidates"),
                ("samples_skipped_early_stop", "samples skipped by early stop"))
            if tot.get(k))
            + (f"; {tot['sample_passes']} sample passes in {tot['model_calls']} batched calls"
               if tot.get("model_calls") else ""))
