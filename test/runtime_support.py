"""Helpers for the export/runtime tests: a real skip plan file and a tiny model whose
greedy output is not one repeated token."""
import json
from pathlib import Path

import torch


def write_plan(path, identity: dict, removed=(), vision_removed=()) -> Path:
    """A minimal valid GM-Skip plan (schema v1) for ``identity`` removing ``removed``
    decoder blocks (original indices) at its operating step 1."""
    names = [f"decoder:{i}" for i in removed] + [f"vision:{i}" for i in vision_removed]
    plan = {
        "schema": "gm_skip_plan", "version": 1, "model": identity,
        "data": {"source": "test"}, "seed": 0, "metric": "accuracy", "search": {},
        "removal_order": names,
        "steps": [{"step": 0, "removed": []}, {"step": 1, "removed": names}],
        "operating_point": {"step": 1, "removed_decoder": sorted(removed),
                            "removed_vision": sorted(vision_removed), "chosen_by": "user"},
    }
    path = Path(path)
    path.write_text(json.dumps(plan))
    return path


def sharpen(model, seed: int = 1, std: float = 0.1):
    """Re-draw matrix weights with a larger spread so that greedy decoding is varied."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def sharpened_model_dir(src_dir, out_dir, seed: int = 1, std: float = 0.35) -> Path:
    """Copy of a saved tiny model with sharpened weights (processor included)."""
    from gm_skip_ros.models import load_vlm

    vlm = load_vlm(src_dir)
    sharpen(vlm.model, seed, std)
    vlm.model.save_pretrained(out_dir, safe_serialization=True)
    vlm.processor.save_pretrained(out_dir)
    vlm.model.generation_config.save_pretrained(out_dir)
    return Path(out_dir)
