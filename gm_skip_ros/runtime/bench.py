"""Latency benchmark: the full and the pruned model on the same backend, in one process.

Method:

* both backends are built first, then each gets ``warmup`` untimed calls;
* ``reps`` timed repetitions are interleaved (full, pruned, then pruned, full, ...) so
  that drift (thermal, other processes) hits both alike;
* every call uses the same fixed image and prompt and produces exactly
  ``max_new_tokens`` tokens (``ignore_eos``), so full and pruned do the same work;
* per stage (preprocess, vision, prefill, per decode token, total) the median, the
  10th/90th percentiles and the interquartile range are reported;
* the share ``s`` of the full model's time spent inside decoder blocks is measured
  separately, in extra runs with instrumentation (torch: forward hooks around each block;
  ONNX Runtime: its profiler, kernel time of nodes under ``lm.layers.N``), so the timed
  runs carry no instrumentation;
* ideal pruned/full ratio = ``(1 - s) + s * kept / total`` (only block time shrinks);
  it is compared with the measured ratio of median totals, and ``1 - s`` is the share of
  the time outside the decoder blocks that cannot shrink by skipping them.

Threads: torch and ONNX Runtime get the same ``num_threads``; set ``OMP_WAIT_POLICY=PASSIVE``
in the environment (the Makefile does) so idle OpenMP threads do not spin.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.io import atomic_write_json

log = logging.getLogger(__name__)

STAGES = ("preprocess_ms", "vision_ms", "prefill_ms", "per_token_ms", "decode_ms", "total_ms")


def default_image(seed: int = 0) -> np.ndarray:
    """A fixed synthetic driving scene (640x480 RGB) from the scene generator."""
    from gm_skip_ros.data.scenes import render_scene

    img, _ = render_scene(np.random.default_rng(seed))
    return img


def load_image(path) -> np.ndarray:
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise GmSkipError(f"image {str(p)!r} does not exist; pass a PNG/JPEG file or omit "
                          "--image to use the built-in synthetic scene")
    return np.asarray(Image.open(p).convert("RGB"))


def summarize(values) -> dict:
    a = np.asarray(values, dtype=float)
    p10, p25, p50, p75, p90 = np.percentile(a, [10, 25, 50, 75, 90])
    return {"median": float(p50), "p10": float(p10), "p90": float(p90),
            "iqr": float(p75 - p25), "n": int(a.size)}


def _stage_values(result) -> dict:
    t = result.timings
    return {"preprocess_ms": t.preprocess_ms, "vision_ms": t.vision_ms,
            "prefill_ms": t.prefill_ms, "per_token_ms": t.per_token_ms,
            "decode_ms": t.decode_ms, "total_ms": t.total_ms}


def run_bench(full, pruned, *, image: np.ndarray, prompt: str, max_new_tokens: int = 16,
              reps: int = 10, warmup: int = 2, share_reps: int = 3) -> dict:
    """Benchmark two backends (full and pruned, same kind); return the result dict."""
    if reps < 1:
        raise GmSkipError("--reps must be at least 1")
    pair = {"full": full, "pruned": pruned}
    for name, b in pair.items():
        for _ in range(warmup):
            b.generate(image, prompt, max_new_tokens, ignore_eos=True)
    samples = {name: {s: [] for s in STAGES} for name in pair}
    texts = {}
    t0 = time.perf_counter()
    for i in range(reps):
        order = ("full", "pruned") if i % 2 == 0 else ("pruned", "full")
        for name in order:
            r = pair[name].generate(image, prompt, max_new_tokens, ignore_eos=True)
            if r.timings.new_tokens != max_new_tokens:
                raise RuntimeError("benchmark generation did not produce max_new_tokens tokens")
            for k, v in _stage_values(r).items():
                samples[name][k].append(v)
            texts[name] = r.text
    wall = time.perf_counter() - t0
    stats = {name: {s: summarize(v) for s, v in samples[name].items()} for name in pair}
    share = full.block_time_share(image, prompt, max_new_tokens, reps=share_reps)
    s = float(share["share"])
    kept, total = pruned.blocks_active, full.blocks_active
    ratio = stats["pruned"]["total_ms"]["median"] / stats["full"]["total_ms"]["median"]
    ideal = (1.0 - s) + s * kept / total
    dec_full = stats["full"]["prefill_ms"]["median"] + stats["full"]["decode_ms"]["median"]
    dec_pruned = stats["pruned"]["prefill_ms"]["median"] + stats["pruned"]["decode_ms"]["median"]
    return {
        "backend": full.name, "device": full.device,
        "model_id": full.model_id, "plan_id": pruned.plan_id,
        "blocks": {"full": total, "pruned": kept, "original": full.blocks_total},
        "vision_blocks": {"full": full.vision_blocks_active,
                          "pruned": pruned.vision_blocks_active},
        "settings": {"reps": reps, "warmup": warmup, "max_new_tokens": max_new_tokens,
                     "prompt": prompt, "image_shape": list(image.shape),
                     "num_threads": _threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                     "interleaved": True},
        "stages": stats,
        "texts": texts,
        "block_share": share,
        "ratios": {
            "measured_total": ratio,
            "blocks_kept": kept / total,
            "ideal_total": ideal,
            "measured_vs_ideal": ratio / ideal - 1.0,
            "measured_decoder_stages": dec_pruned / dec_full if dec_full else None,
            "latency_reduction": 1.0 - ratio,
            "outside_blocks_share": 1.0 - s,
        },
        "wall_s": wall,
    }


def _threads():
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:  # pragma: no cover
        return None


def format_table(res: dict) -> str:
    """A small plain-text table of medians (p10-p90) and the ratios."""
    st = res["stages"]
    lines = [f"backend {res['backend']} ({res['device']}), model {res['model_id']}, "
             f"plan {res['plan_id']}: decoder blocks {res['blocks']['pruned']}/"
             f"{res['blocks']['full']}, {res['settings']['max_new_tokens']} new tokens, "
             f"{res['settings']['reps']} interleaved reps",
             f"{'stage':<14}{'full ms (p10-p90)':>26}{'pruned ms (p10-p90)':>26}{'ratio':>8}"]
    for s in STAGES:
        f, p = st["full"][s], st["pruned"][s]
        r = p["median"] / f["median"] if f["median"] else float("nan")
        lines.append(f"{s[:-3]:<14}{_cell(f):>26}{_cell(p):>26}{r:>8.3f}")
    r = res["ratios"]
    lines += [
        f"measured total ratio pruned/full: {r['measured_total']:.3f} "
        f"(latency reduction {100 * r['latency_reduction']:.1f}%)",
        f"decoder blocks kept: {r['blocks_kept']:.3f}; time share in decoder blocks "
        f"(full model): {res['block_share']['share']:.3f} -> ideal ratio {r['ideal_total']:.3f}; "
        f"measured vs ideal {100 * r['measured_vs_ideal']:+.1f}%",
        f"time outside the decoder blocks (cannot shrink by skipping them): "
        f"{100 * r['outside_blocks_share']:.1f}%",
    ]
    return "\n".join(lines)


def _cell(s: dict) -> str:
    return f"{s['median']:.2f} ({s['p10']:.2f}-{s['p90']:.2f})"


def write_json(res: dict, path) -> Path:
    return atomic_write_json(path, res)


def plot(res: dict, path) -> Path:
    """Bar chart of per-stage medians, full vs pruned, with p10-p90 whiskers (PNG)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gm_skip_ros.io import atomic_write_bytes

    stages = [s for s in STAGES if s != "decode_ms"]
    x = np.arange(len(stages))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for j, name in enumerate(("full", "pruned")):
        st = res["stages"][name]
        med = [st[s]["median"] for s in stages]
        err = [[st[s]["median"] - st[s]["p10"] for s in stages],
               [st[s]["p90"] - st[s]["median"] for s in stages]]
        ax.bar(x + (j - 0.5) * 0.38, med, 0.38, yerr=err, capsize=3,
               label=f"{name} ({res['blocks'][name]} blocks)")
    ax.set_xticks(x, [s[:-3] for s in stages])
    ax.set_ylabel("ms (median, p10-p90)")
    r = res["ratios"]
    ax.set_title(f"{res['backend']}: pruned/full {r['measured_total']:.3f} "
                 f"(ideal {r['ideal_total']:.3f})")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
