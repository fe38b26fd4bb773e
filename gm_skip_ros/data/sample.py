"""The one sample type every data source produces and every consumer reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Sample:
    """One evaluation example.

    image:   H x W x 3 uint8 RGB array (camera resolution; the model's processor resizes).
    prompt:  the question or instruction given to the VLM (plain text, no chat template).
    answers: acceptable reference answers (class name and synonyms for classification,
             several phrasings for captions). answers[0] is the canonical one, used for
             the answer negative log-likelihood.
    stamp_ns: source timestamp in nanoseconds (header stamp for bag frames), if any.
    id:      stable identifier (file name, or "<topic>@<stamp_ns>" for bags); used for
             deterministic splits and data-set hashing.
    meta:    free-form ground truth (e.g. {"class": "car", "light_state": "red"}).
    """

    image: np.ndarray
    prompt: str
    answers: tuple[str, ...]
    stamp_ns: int | None = None
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.answers = tuple(self.answers)
