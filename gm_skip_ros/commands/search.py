"""gm-skip search: the GM-Skip greedy search; writes a skip plan."""
from __future__ import annotations

from gm_skip_ros.commands._common import (
    add_data_args, add_metric_arg, add_model_args, data_info, load_data, load_model,
    quiet_transformers,
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
                   help="evaluate every candidate on every sample (reference behaviour)")
    p.add_argument("--seed", type=int, default=0, help="seed recorded in the plan (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from gm_skip_ros.errors import GmSkipError
    from gm_skip_ros.search.evaluate import Evaluator
    from gm_skip_ros.search.greedy import SearchConfig, gm_skip_search
    from gm_skip_ros.search.metrics import get_metric
    from gm_skip_ros.search.plan import new_plan

    quiet_transformers()
    torch.manual_seed(args.seed)
    metric = get_metric(args.metric)
    cfg = SearchConfig(
        metric=args.metric, balance=args.balance, protect_first=args.protect_first,
        window=args.window, target_sparsity=args.target_sparsity,
        min_relative_metric=args.min_relative_metric, max_steps=args.max_steps,
        secondary=args.secondary, scope=args.scope, max_new_tokens=args.max_new_tokens,
        early_stop=not args.no_early_stop, full_curve=args.full_curve,
    )
    if not args.out.endswith(".json"):
        raise GmSkipError(f"--out {args.out!r}: the plan file name must end in .json")
    samples = load_data(args)
    vlm = load_model(args)
    cfg.validate(vlm.num_decoder_blocks, vlm.num_vision_blocks)
    ev = Evaluator(vlm, samples, metric, max_new_tokens=args.max_new_tokens,
                   secondary=args.secondary)
    bar = tqdm(desc="gm-skip search", unit="cand", leave=False)

    def progress(step, block, cand):
        bar.set_postfix_str(f"step {step} {block[0]}:{block[1]} {args.metric}={cand.metric:.3f}")
        bar.update(1)

    result = gm_skip_search(ev, cfg, progress=progress)
    bar.close()
    plan = new_plan(vlm.identity(), result, data_info(args, samples, args.split), args.seed,
                    args.metric)
    plan.save(args.out)
    print_summary(plan)
    print(f"plan written to {args.out}")
    return 0


def print_summary(plan) -> None:
    n = plan.model["num_decoder_blocks"]
    print(f"{'step':>4} {'removed':>18} {'kept':>5} {'metric':>8} {'rel':>6} {'nll':>7} "
          f"{'J':>6} {'cands':>5} {'passes':>6} {'wall_s':>7}")
    for s in plan.steps:
        last = s["removed"][-1] if s["removed"] else "-"
        mark = " <- operating point" if s["step"] == plan.operating_step else ""
        mark += "" if s["meets_min_metric"] else " (below min metric)"
        print(f"{s['step']:>4} {last:>18} {s['decoder_blocks_kept']:>2}/{n:<2} "
              f"{s['metric']:8.4f} {s['relative_metric']:6.3f} {s['nll']:7.4f} "
              f"{s['balanced']:6.3f} {len(s['candidates']):>5} {s['forward_passes']:>6} "
              f"{s['wall_s']:7.1f}{mark}")
    c = plan.data["cost"]
    print(f"search: {c['wall_s']:.1f} s, {c['forward_passes']} forward passes")
