"""Where the project's own demo VLM lives.

The demo model (a small Llava trained on rendered driving scenes by
``python -m gm_skip_ros.training.train_demo``) ships in the repository as
``models/demo_vlm``. It is an ordinary local Hugging Face directory: load it with
:func:`gm_skip_ros.models.load_vlm` like any other model. This module only finds it:

1. ``$GM_SKIP_DEMO_MODEL`` if set (must be a model directory);
2. ``models/demo_vlm`` of the source checkout this package was imported from;
3. ``share/gm_skip_ros/models/demo_vlm`` of every prefix on ``$AMENT_PREFIX_PATH`` (a
   colcon/ament install) and of the Python installation prefix.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from gm_skip_ros.errors import GmSkipError

ENV_VAR = "GM_SKIP_DEMO_MODEL"
PACKAGE = "gm_skip_ros"
SUBDIR = Path("models") / "demo_vlm"
TRAIN_COMMAND = "python -m gm_skip_ros.training.train_demo --out models/demo_vlm --seed 0"


def _is_model_dir(path: Path) -> bool:
    """config.json and complete safetensors weights (one file, or every indexed shard)."""
    from gm_skip_ros.models.loading import weight_files

    if not (path.is_dir() and (path / "config.json").is_file()):
        return False
    try:
        return bool(weight_files(path))
    except GmSkipError:  # a sharded model with a shard missing
        return False


def candidate_dirs() -> list[Path]:
    """Places searched for the demo model, in order (the environment variable excluded)."""
    out = [Path(__file__).resolve().parents[2] / SUBDIR]  # <checkout>/gm_skip_ros/models/
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(sys.prefix)
    for prefix in prefixes:
        out.append(Path(prefix) / "share" / PACKAGE / SUBDIR)
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def default_model_dir() -> Path:
    """Directory of the shipped demo VLM; GmSkipError saying what to do if there is none."""
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not _is_model_dir(path):
            raise GmSkipError(
                f"{ENV_VAR}={env} is not a model directory (no config.json and complete "
                f"*.safetensors weights there); point it at the demo model or unset it")
        return path
    searched = candidate_dirs()
    for path in searched:
        if _is_model_dir(path):
            return path
    raise GmSkipError(
        "demo model not found (looked in " + ", ".join(str(p) for p in searched)
        + f"); train it with `{TRAIN_COMMAND}` or set {ENV_VAR} to a model directory")
