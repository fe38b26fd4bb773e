"""ONNX export of a (pruned) VLM: vision graph, embedding matrix, decoder graph with KV cache."""
from __future__ import annotations

from pathlib import Path

from gm_skip_ros.io import sha256_file


def plan_sha256(plan_path) -> str:
    """sha256 of a plan file's bytes (the plan's identity in manifests and cache keys)."""
    return sha256_file(Path(plan_path))
