"""gm-skip compare: GM-Skip vs drop-last-k, ShortGPT BI and SLEB-style NLL greedy."""
from __future__ import annotations

from gm_skip_ros.commands._common import (
    add_data_args, add_metric_arg, add_model_args, load_data, load_model, quiet_transformers,
)


def register(sub) -> None:
    p = sub.add_parser("compare", help="GM-Skip vs baselines at equal sparsity (table + plot)",
                       description="Choose removal orders on the calibration split (GM-Skip from "
                       "--plan, or a fresh search), score every method on the held-out split at "
                       "the same numbers of removed blocks, print a table, write a PNG plot.")
    add_model_args(p)
    add_data_args(p, default_split="heldout")
    add_metric_arg(p)
    p.add_argument("--plan", required=True, metavar="PLAN.json",
                   help="GM-Skip plan (from gm-skip search on the calibration split)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory for compare.json, compare.png and compare.txt")
    p.add_argument("--max-k", type=int, default=None,
                   help="largest number of removed blocks (default: the plan's last step)")
    p.add_argument("--protect-first", type=int, default=None,
                   help="baselines never remove the first N blocks (default: the plan's)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from gm_skip_ros.io import atomic_write_text
    from gm_skip_ros.search.compare import compare_methods, format_table, plot_curves, save_result
    from gm_skip_ros.search.fast import FastEvaluator
    from gm_skip_ros.search.metrics import get_metric
    from gm_skip_ros.search.plan import load_plan

    quiet_transformers()
    plan = load_plan(args.plan)
    metric = get_metric(args.metric)
    vlm = load_model(args)
    plan.check_model(vlm.identity())
    calib = load_data(args, split="calib")
    held = load_data(args)
    max_k = args.max_k if args.max_k is not None else len(plan.steps) - 1
    protect = args.protect_first if args.protect_first is not None else \
        int(plan.data["search"].get("protect_first", 1))
    # the exact speed-ups (vision cache, batching of equal shapes): Evaluator's numbers
    calib_ev = FastEvaluator(vlm, calib, metric, max_new_tokens=args.max_new_tokens)
    eval_ev = FastEvaluator(vlm, held, metric, max_new_tokens=args.max_new_tokens,
                            mask=calib_ev.mask)  # one mask per model
    result = compare_methods(plan, calib_ev, eval_ev, list(range(0, max_k + 1)), protect)
    out = Path(args.out)
    table = format_table(result, args.metric)
    save_result(result, out / "compare.json")
    atomic_write_text(out / "compare.txt", table + "\n")
    plot_curves(result, args.metric, out / "compare.png")
    print(table)
    print(f"written: {out / 'compare.json'}, {out / 'compare.png'}, {out / 'compare.txt'}")
    return 0
