"""GM-Skip vs the baselines at equal sparsity, in one harness.

Removal orders are chosen on the calibration samples (GM-Skip from its plan, ShortGPT from
one Block-Influence pass, SLEB-style greedy on answer NLL, drop-the-last-k), then every
order is scored on the *same* evaluation samples at the same numbers of removed blocks.
"""
from __future__ import annotations

import time
from pathlib import Path

from gm_skip_ros.io import atomic_write_bytes, atomic_write_json
from gm_skip_ros.search.evaluate import Evaluator
from gm_skip_ros.search.greedy import (
    block_influence_order, curve_for_order, drop_last_order, parse_block, sleb_order,
)

METHODS = ("gm_skip", "drop_last", "shortgpt_bi", "sleb_nll")


def compare_methods(plan, calib_ev: Evaluator, eval_ev: Evaluator, ks: list[int],
                    protect_first: int = 1, methods=METHODS) -> dict:
    """Curves {method: [{"k", "metric", "nll", "removed"}]} on ``eval_ev`` at each k."""
    n = calib_ev.mask.num_decoder
    orders: dict[str, list] = {}
    timing: dict[str, float] = {}
    if "gm_skip" in methods:
        orders["gm_skip"] = [parse_block(b) for b in plan.data["removal_order"]]
        timing["gm_skip"] = float(plan.data["cost"]["wall_s"])
    if "drop_last" in methods:
        orders["drop_last"] = drop_last_order(n, protect_first)
        timing["drop_last"] = 0.0
    extra = {}
    if "shortgpt_bi" in methods:
        t = time.perf_counter()
        orders["shortgpt_bi"], extra["block_influence"] = block_influence_order(
            calib_ev, protect_first)
        timing["shortgpt_bi"] = time.perf_counter() - t
    if "sleb_nll" in methods:
        t = time.perf_counter()
        orders["sleb_nll"] = sleb_order(calib_ev, max(ks), protect_first)
        timing["sleb_nll"] = time.perf_counter() - t
    base = eval_ev.evaluate()
    curves = {}
    for name, order in orders.items():
        pts = [{"k": 0, "removed": [], "metric": base.score, "nll": base.nll}]
        pts += curve_for_order(eval_ev, order, [k for k in ks if k > 0])
        curves[name] = pts
    return {"num_decoder_blocks": n, "ks": ks, "curves": curves, "selection_wall_s": timing,
            "orders": {k: [f"{a}:{b}" for a, b in v] for k, v in orders.items()}, **extra}


def format_table(result: dict, metric: str) -> str:
    names = list(result["curves"])
    n = result["num_decoder_blocks"]
    lines = [f"{'removed':>7} {'kept':>5} " + " ".join(f"{m:>12}" for m in names)]
    for k in result["ks"]:
        row = f"{k:>7} {n - k:>2}/{n:<2} "
        for m in names:
            pt = next((p for p in result["curves"][m] if p["k"] == k), None)
            row += f" {pt['metric']:12.4f}" if pt else f" {'-':>12}"
        lines.append(row)
    lines.append(f"(held-out {metric}; removal orders chosen on the calibration split)")
    return "\n".join(lines)


def plot_curves(result: dict, metric: str, path: str | Path, title: str = "") -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    style = {"gm_skip": ("o-", "GM-Skip (metric-guided, reverse order)"),
             "drop_last": ("s--", "drop last k"), "shortgpt_bi": ("^--", "ShortGPT BI"),
             "sleb_nll": ("v--", "SLEB-style greedy (NLL)")}
    for name, pts in result["curves"].items():
        fmt, label = style.get(name, ("x-", name))
        ax.plot([p["k"] for p in pts], [p["metric"] for p in pts], fmt, label=label)
    n = result["num_decoder_blocks"]
    ax.set_xlabel(f"decoder blocks skipped (of {n})")
    ax.set_ylabel(f"held-out {metric}")
    ax.set_title(title or f"GM-Skip vs baselines ({metric})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def save_result(result: dict, path: str | Path) -> Path:
    return atomic_write_json(path, result)
