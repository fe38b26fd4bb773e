"""Data layer: the ``Sample`` type, JSONL and rosbag readers, the driving-scene generator."""
from __future__ import annotations

from pathlib import Path

from gm_skip_ros.data.sample import Sample
from gm_skip_ros.errors import GmSkipError

__all__ = ["Sample", "open_dataset"]


def open_dataset(spec: str | Path, *, task: str | None = None, split: str | None = None,
                 holdout_fraction: float = 0.3, limit: int | None = None,
                 image_topic: str | None = None, label_topic: str | None = None) -> list[Sample]:
    """Load the samples of a data set: a JSONL file or a rosbag2 bag (dir, .mcap, .db3).

    split: None (all), "calib" or "heldout" - a deterministic split by a hash of each
    sample's id. task: for bags, "classify" or "caption" (the prompt and references come
    from the ground-truth labels); ignored for JSONL, which carries its own prompts.
    Raises GmSkipError if the result is empty.
    """
    p = Path(spec)
    if not p.exists():
        raise GmSkipError(f"data set {str(p)!r} does not exist; pass a JSONL file or a rosbag2 "
                          "bag (make one with gm-skip make-bag)")
    if p.suffix == ".jsonl" or (p.is_file() and p.suffix in (".json", ".txt")):
        from gm_skip_ros.data.jsonl import read_jsonl_samples

        samples = list(read_jsonl_samples(p, split=split, holdout_fraction=holdout_fraction,
                                          limit=limit))
    else:
        from gm_skip_ros.data.rosbag import LABEL_TOPIC, is_bag_path, read_bag_samples

        if not is_bag_path(p):
            raise GmSkipError(f"{p} is neither a .jsonl file nor a rosbag2 bag (a directory with "
                              "metadata.yaml, or a .mcap / .db3 file)")
        samples = list(read_bag_samples(p, task=task or "classify", image_topic=image_topic,
                                        label_topic=label_topic or LABEL_TOPIC, split=split,
                                        holdout_fraction=holdout_fraction, limit=limit))
    if not samples:
        raise GmSkipError(f"data set {p} has no usable samples"
                          + (f" in split {split!r}" if split else "")
                          + "; check the path, topics and labels")
    return samples
