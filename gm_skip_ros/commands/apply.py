"""gm-skip apply: a plan applied to a model, written as a pruned model directory."""
from __future__ import annotations

from gm_skip_ros.commands._common import add_model_args, load_model, quiet_transformers


def register(sub) -> None:
    p = sub.add_parser("apply", help="remove a plan's blocks and save the pruned model",
                       description="Physically remove the blocks of a skip plan (its operating "
                       "point, or --step K) and save a normal Hugging Face model directory.")
    add_model_args(p)
    p.add_argument("--plan", required=True, metavar="PLAN.json")
    p.add_argument("--out", required=True, metavar="DIR", help="pruned model directory")
    p.add_argument("--step", type=int, default=None,
                   help="use the plan's state after K removals instead of its operating point")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from gm_skip_ros.errors import GmSkipError
    from gm_skip_ros.search.plan import apply_plan, load_plan, write_pruned_model

    quiet_transformers()
    plan = load_plan(args.plan)
    if Path(args.out).resolve() == Path(args.model).resolve():
        raise GmSkipError("--out must differ from --model: the source model is never modified")
    if args.step is not None:
        plan = plan.with_operating_step(args.step)
    vlm = load_model(args)
    n0 = vlm.num_decoder_blocks
    apply_plan(vlm, plan)
    write_pruned_model(vlm, plan, args.out)
    print(f"pruned model written to {args.out}: decoder blocks {vlm.num_decoder_blocks}/{n0} "
          f"(removed {plan.removed_decoder}), vision blocks removed {plan.removed_vision}")
    return 0
