"""JSONL data sets: one sample per line,
``{"image": "path relative to the file", "prompt": "...", "answers": ["...", ...]}``.

Optional keys: ``"id"`` (default: the image path) and ``"meta"`` (free-form dict).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import cv2

from gm_skip_ros.data.sample import Sample
from gm_skip_ros.errors import GmSkipError


def read_jsonl_samples(path: str | Path, split: str | None = None,
                       holdout_fraction: float = 0.3, limit: int | None = None
                       ) -> Iterator[Sample]:
    """Stream the samples of a JSONL file (images read on the fly, as RGB)."""
    from gm_skip_ros.data.rosbag import split_of

    p = Path(path)
    if not p.is_file():
        raise GmSkipError(f"data file {str(p)!r} does not exist")
    count = 0
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                image_rel, prompt, answers = rec["image"], rec["prompt"], rec["answers"]
            except (ValueError, KeyError, TypeError) as exc:
                raise GmSkipError(f"{p}:{lineno}: not a sample line ({exc}); expected "
                                  '{"image": ..., "prompt": ..., "answers": [...]}') from None
            if isinstance(answers, str):
                answers = [answers]
            if not answers or not all(isinstance(a, str) for a in answers):
                raise GmSkipError(f"{p}:{lineno}: 'answers' must be a non-empty list of strings")
            sid = str(rec.get("id", image_rel))
            if split is not None and split_of(sid, holdout_fraction) != split:
                continue
            img_path = (p.parent / image_rel)
            bgr = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise GmSkipError(f"{p}:{lineno}: cannot read image {img_path}")
            yield Sample(image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), prompt=str(prompt),
                         answers=tuple(answers), id=sid, meta=dict(rec.get("meta", {})))
            count += 1
            if limit is not None and count >= limit:
                return
