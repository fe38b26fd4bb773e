"""gm-skip eval: the task metric of a model (optionally with a plan) on a data set."""
from __future__ import annotations

from gm_skip_ros.commands._common import (
    add_data_args, add_metric_arg, add_model_args, load_data, load_model, print_json,
    quiet_transformers,
)


def register(sub) -> None:
    p = sub.add_parser("eval", help="score a model (or model + plan) on a data set",
                       description="Greedy-generate an answer per sample and score it with "
                       "the task metric.")
    add_model_args(p)
    add_data_args(p, default_split="heldout")
    add_metric_arg(p)
    p.add_argument("--plan", default=None, metavar="PLAN.json",
                   help="apply this plan (blocks physically removed) before evaluating")
    p.add_argument("--step", type=int, default=None, help="plan state after K removals")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--show", type=int, default=0, help="print the first N predictions")
    p.set_defaults(func=run)


def run(args) -> int:
    from gm_skip_ros.search.evaluate import Evaluator
    from gm_skip_ros.search.metrics import get_metric
    from gm_skip_ros.search.plan import apply_plan, load_plan

    quiet_transformers()
    metric = get_metric(args.metric)
    plan = load_plan(args.plan) if args.plan else None
    samples = load_data(args)
    vlm = load_model(args)
    n0 = vlm.num_decoder_blocks
    if plan is not None:
        if args.step is not None:
            plan = plan.with_operating_step(args.step)
        apply_plan(vlm, plan)
    ev = Evaluator(vlm, samples, metric, max_new_tokens=args.max_new_tokens)
    r = ev.evaluate()
    out = {"metric": args.metric, "score": r.score, "nll": r.nll, "num_samples": len(samples),
           "split": args.split, "decoder_blocks": vlm.num_decoder_blocks,
           "decoder_blocks_total": n0, "plan": args.plan, "wall_s": r.wall_s}
    if args.json:
        print_json(out)
    else:
        for s, pred in list(zip(samples, r.predictions))[:args.show]:
            print(f"  {s.id}: {pred!r}  (refs: {list(s.answers)[:3]})")
        print(f"{args.metric} = {r.score:.4f}  (answer NLL {r.nll:.4f}, {len(samples)} samples, "
              f"split {args.split}, decoder blocks {vlm.num_decoder_blocks}/{n0})")
    return 0
