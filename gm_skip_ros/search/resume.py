"""Resumable search: the state after every step, written atomically beside the plan.

``gm-skip search --out plan.json`` keeps ``plan.state.json`` up to date after every
committed step; when the search finishes, the plan is written and the state removed.
After a crash or a kill, the same command with ``--resume`` continues from the last
completed step and produces the plan an uninterrupted run produces (the greedy search is
deterministic given model, data and configuration).

The state carries a *fingerprint* of everything that decides the plan: the model
(architecture, config and weights sha256), the data (sha256 of ids, prompts, answers and
image bytes, and the sample count), the metric and the search configuration. A resume
with anything different is refused. Options that only change *how fast* the plan is
computed (--plain, batching, Ray workers, early stopping) are not part of it: a search
can be resumed on more workers.
"""
from __future__ import annotations

import json
from pathlib import Path

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.io import atomic_write_json

SCHEMA = "gm_skip_search_state"
VERSION = 1
# search-config fields that change the cost of the search, not its result
_SPEED_ONLY = ("early_stop",)


def state_path(plan_path: str | Path) -> Path:
    p = Path(plan_path)
    return p.with_name(p.stem + ".state.json")


def fingerprint(identity: dict, data_info: dict, config: dict, metric: str) -> dict:
    """What must be equal for a saved state to be continued."""
    return {
        "model": {k: identity.get(k) for k in ("architecture", "config_sha256",
                                                "weights_sha256")},
        "data": {"sha256": data_info.get("sha256"), "num_samples": data_info.get("num_samples")},
        "metric": metric,
        "search": {k: v for k, v in sorted(config.items()) if k not in _SPEED_ONLY},
    }


def save_state(path: str | Path, fp: dict, steps, wall_s: float, forward_passes: int) -> Path:
    from dataclasses import asdict

    return atomic_write_json(path, {
        "schema": SCHEMA, "version": VERSION, "fingerprint": fp,
        "steps": [asdict(s) for s in steps], "wall_s": wall_s, "forward_passes": forward_passes,
    })


def _diff(a, b, prefix: str = "") -> str | None:
    """The first differing key path between two JSON-like values (None: equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _diff(a.get(k), b.get(k), f"{prefix}{k}.")
            if d:
                return d
        return None
    return None if a == b else f"{prefix[:-1]} (saved {str(a)[:24]}, now {str(b)[:24]})"


def load_state(path: str | Path, fp: dict) -> dict:
    """The saved state at ``path`` if it matches ``fp``; GmSkipError otherwise."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise GmSkipError(f"cannot read the search state {p} ({exc}); delete it and start "
                          "the search again without --resume") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or \
            data.get("version") != VERSION or not data.get("steps"):
        raise GmSkipError(f"{p} is not a gm-skip search state of version {VERSION}; delete it "
                          "and start the search again without --resume")
    # JSON round trip so that tuples and floats compare as they are stored
    now = json.loads(json.dumps(fp))
    d = _diff(data["fingerprint"], now)
    if d:
        what, _, detail = d.partition(" ")
        raise GmSkipError(f"cannot resume from {p}: the {what} differs {detail}; rerun with the "
                          "original model, data and options, or delete the state file to "
                          "start over")
    return data
