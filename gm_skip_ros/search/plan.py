"""The skip plan: a versioned JSON file from which the pruned model can be rebuilt alone.

Schema (``"schema": "gm_skip_plan", "version": 1``)::

    {
      "schema": "gm_skip_plan", "version": 1,
      "created": "2026-11-24T19:00:00Z", "tool": "gm_skip_ros 0.1.0",
      "model": {"path", "architecture", "model_type", "family",
                "config_sha256", "weights_sha256",
                "num_decoder_blocks", "num_vision_blocks"},      # the UNPRUNED model
      "data": {"source", "split", "num_samples", "sha256", "task"},
      "seed": 0,
      "metric": "accuracy",
      "search": {SearchConfig fields: balance, protect_first, window, target_sparsity,
                 min_relative_metric, max_steps, secondary, scope, max_new_tokens, ...},
      "removal_order": ["decoder:11", "decoder:9", ...],          # greedy commit order
      "steps": [{"step", "removed", "decoder_blocks_kept", "vision_blocks_kept",
                 "metric", "relative_metric", "nll", "balanced", "meets_min_metric",
                 "candidates": [{"block", "metric", "nll", "balanced", "early_stopped",
                                 "wall_s"}], "forward_passes", "wall_s"}],
      "operating_point": {"step": k, "removed_decoder": [...], "removed_vision": [...],
                          "metric": ..., "chosen_by": "balanced" | "user"},
      "cost": {"wall_s", "forward_passes", "evaluator": {"mode": "plain" | "fast", ...},
               "per_step": [{"step", "wall_s", "forward_passes", "candidates",
                             "speedups": {"vision_passes_saved", "prefix_block_calls_saved",
                                          "early_stopped_candidates", "model_calls", ...}}]}
    }

Block indices are always those of the unpruned model. ``steps[k]`` is the state after k
removals, so any operating point can be chosen afterwards (``gm-skip apply --step k``)
without searching again.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

SCHEMA = "gm_skip_plan"
VERSION = 1
PLAN_FILE_IN_MODEL_DIR = "gm_skip_plan.json"


def data_sha256(samples: Sequence) -> str:
    """Identity of a sample list: ids, prompts, answers and image bytes, in order."""
    h = hashlib.sha256()
    for s in samples:
        h.update(s.id.encode())
        h.update(s.prompt.encode())
        h.update("\x1f".join(s.answers).encode())
        h.update(str(s.image.shape).encode())
        h.update(hashlib.sha256(s.image.tobytes()).digest())
    return h.hexdigest()


@dataclass
class SkipPlan:
    data: dict
    path: Path | None = None

    # -- accessors
    @property
    def model(self) -> dict:
        return self.data["model"]

    @property
    def steps(self) -> list[dict]:
        return self.data["steps"]

    @property
    def operating_step(self) -> int:
        return int(self.data["operating_point"]["step"])

    def removed_at(self, step: int | None = None) -> tuple[list[int], list[int]]:
        """(decoder, vision) original indices removed at ``step`` (default: operating point)."""
        k = self.operating_step if step is None else step
        if not 0 <= k < len(self.steps):
            raise GmSkipError(f"step {k} is not in the plan (it has steps 0..{len(self.steps) - 1})")
        names = self.steps[k]["removed"]
        dec = sorted(int(n.split(":")[1]) for n in names if n.startswith("decoder:"))
        vis = sorted(int(n.split(":")[1]) for n in names if n.startswith("vision:"))
        return dec, vis

    @property
    def removed_decoder(self) -> list[int]:
        return self.removed_at()[0]

    @property
    def removed_vision(self) -> list[int]:
        return self.removed_at()[1]

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.data, sort_keys=True).encode()).hexdigest()

    def with_operating_step(self, step: int) -> "SkipPlan":
        dec, vis = self.removed_at(step)
        d = json.loads(json.dumps(self.data))
        d["operating_point"] = {"step": step, "removed_decoder": dec, "removed_vision": vis,
                                "metric": self.steps[step]["metric"], "chosen_by": "user"}
        return SkipPlan(d, None)

    # -- validation against a model
    def check_model(self, identity: dict) -> None:
        """Refuse a model that is not the one the plan was searched on."""
        m = self.model
        for key, what in (("architecture", "architecture"), ("config_sha256", "config"),
                          ("weights_sha256", "weights")):
            if m.get(key) != identity.get(key):
                raise GmSkipError(
                    f"the plan was made for another model: {what} differs (plan "
                    f"{str(m.get(key))[:16]}, model {str(identity.get(key))[:16]}; plan model "
                    f"path {m.get('path')}). Run gm-skip search on this model, or pass the "
                    "model directory the plan was made for")
        if m.get("path") != identity.get("path"):
            log.info("plan model path %s differs from %s, but config and weights match",
                     m.get("path"), identity.get("path"))

    # -- io
    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.data)


def new_plan(identity: dict, result, data_info: dict, seed: int, metric: str) -> SkipPlan:
    """Build a plan from a :class:`~gm_skip_ros.search.greedy.SearchResult`."""
    from gm_skip_ros import __version__

    d = result.to_dict()
    steps = d["steps"]
    op = d["operating_step"]
    plan = {
        "schema": SCHEMA, "version": VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tool": f"gm_skip_ros {__version__}",
        "model": identity,
        "data": data_info,
        "seed": seed,
        "metric": metric,
        "search": {"method": d["method"], **d["config"]},
        "removal_order": steps[-1]["removed"] if steps else [],
        "steps": steps,
        "operating_point": {},
        "cost": {"wall_s": d["wall_s"], "forward_passes": d["forward_passes"],
                 "per_step": [{"step": s["step"], "wall_s": s["wall_s"],
                               "forward_passes": s["forward_passes"],
                               "candidates": len(s["candidates"]),
                               "speedups": s.get("speedups", {})} for s in steps]},
    }
    p = SkipPlan(plan)
    dec, vis = p.removed_at(op)
    plan["operating_point"] = {"step": op, "removed_decoder": dec, "removed_vision": vis,
                               "metric": steps[op]["metric"], "chosen_by": "balanced"}
    return p


def load_plan(path: str | Path) -> SkipPlan:
    p = Path(path)
    if not p.is_file():
        raise GmSkipError(f"plan file {str(p)!r} does not exist; create one with gm-skip search")
    try:
        data = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise GmSkipError(f"plan file {p} is not valid JSON ({exc}); re-run gm-skip search")
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise GmSkipError(f"{p} is not a GM-Skip plan (missing \"schema\": \"{SCHEMA}\")")
    if data.get("version") != VERSION:
        raise GmSkipError(f"plan {p} has schema version {data.get('version')}; this gm_skip_ros "
                          f"reads version {VERSION}")
    for key in ("model", "steps", "operating_point"):
        if key not in data:
            raise GmSkipError(f"plan {p} is incomplete: no {key!r}")
    return SkipPlan(data, p)


def apply_plan(vlm, plan: SkipPlan, step: int | None = None):
    """Validate ``plan`` against ``vlm`` and physically remove its blocks (in place)."""
    from gm_skip_ros.models.surgery import remove_blocks

    plan.check_model(vlm.identity())
    dec, vis = plan.removed_at(step)
    remove_blocks(vlm.model, vlm.family, decoder=dec, vision=vis)
    return vlm


def load_pruned_vlm(model_dir, plan_path=None, *, device: str = "cpu", dtype=None,
                    step: int | None = None, **kwargs):
    """Load a model and apply a plan (blocks physically removed). No plan: full model."""
    from gm_skip_ros.models.loading import load_vlm

    plan = load_plan(plan_path) if plan_path else None
    vlm = load_vlm(model_dir, device=device, dtype=dtype, **kwargs)
    if plan is not None:
        apply_plan(vlm, plan, step)
    return vlm


def write_pruned_model(vlm, plan: SkipPlan, out_dir: str | Path) -> Path:
    """Save a pruned model directory (weights, config, processor, and the plan beside)."""
    out = Path(out_dir)
    with atomic_directory(out) as tmp:
        vlm.model.save_pretrained(tmp, safe_serialization=True)
        if vlm.processor is not None:
            vlm.processor.save_pretrained(tmp)
        gc = getattr(vlm.model, "generation_config", None)
        if gc is not None:
            gc.save_pretrained(tmp)
        atomic_write_json(Path(tmp) / PLAN_FILE_IN_MODEL_DIR, plan.data)
    return out
