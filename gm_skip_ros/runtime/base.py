"""The Backend interface, its result types and the greedy generation loop all backends share.

A backend implements three stage methods (vision, prefill, decode) over the split model
of :mod:`gm_skip_ros.export.graphs`; :meth:`Backend.generate` owns everything else
(preprocessing through the processor and :func:`gm_skip_ros.models.build_inputs`, greedy
choice, stop tokens, per-stage timing, detokenisation). So the torch, ONNX Runtime and
TensorRT backends do the same work and their timings are comparable.

Stage boundaries (milliseconds, wall clock, ``time.perf_counter``):

* ``preprocess_ms``: chat template + tokenisation + image resize/normalise (processor).
* ``vision_ms``: vision tower + projector.
* ``prefill_ms``: embedding lookup + image-token merge + decoder over the prompt; yields
  the first new token.
* ``decode_ms``: every later token, one decoder step each (``decode_steps`` of them).
* ``total_ms``: the whole call, from image in to text out (includes detokenisation).
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Extra end-of-turn tokens honoured as stop tokens when the tokenizer has them.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|endoftext|>",
                      "<end_of_utterance>")


@dataclass
class StageTimings:
    """Per-stage wall-clock times of one :meth:`Backend.generate` call, in milliseconds."""

    preprocess_ms: float = 0.0
    vision_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0
    prompt_tokens: int = 0
    new_tokens: int = 0

    @property
    def decode_steps(self) -> int:
        """Decoder steps after the prefill (the prefill yields the first token)."""
        return max(self.new_tokens - 1, 0)

    @property
    def per_token_ms(self) -> float:
        """Mean decode time per token after the first (0 when there was none)."""
        return self.decode_ms / self.decode_steps if self.decode_steps else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["per_token_ms"] = self.per_token_ms
        return d


@dataclass(frozen=True)
class GenerationResult:
    """Output of :meth:`Backend.generate`: decoded text (stop token excluded), the new
    token ids (stop token included if one ended the generation) and the stage timings."""

    text: str
    tokens: tuple[int, ...]
    timings: StageTimings


def stop_token_ids(generation_config, tokenizer) -> frozenset[int]:
    """End-of-sequence ids: the generation config's ``eos_token_id`` (int or list), the
    tokenizer's eos, and known end-of-turn tokens present in the vocabulary."""
    ids: set[int] = set()
    eos = getattr(generation_config, "eos_token_id", None) if generation_config else None
    if isinstance(eos, int):
        ids.add(eos)
    elif eos is not None:
        ids.update(int(e) for e in eos)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for tok in END_OF_TURN_TOKENS:
        if tok in vocab:
            ids.add(int(vocab[tok]))
    return frozenset(ids)


class Backend(ABC):
    """One loaded (full or pruned) VLM behind a uniform ``generate`` call.

    Attributes every backend sets: ``name`` (``torch``/``onnxruntime``/``tensorrt``),
    ``model_id`` (model directory name + weights hash prefix), ``plan_id`` (plan hash
    prefix, or ``"full"`` without a plan), ``blocks_active`` / ``blocks_total`` (decoder
    blocks kept / in the original model), ``device``.
    """

    name: str = "base"

    def __init__(self, *, processor, generation_config, model_id: str, plan_id: str,
                 blocks_active: int, blocks_total: int, image_token: int, device: str,
                 vision_blocks_active: int | None = None, vision_blocks_total: int | None = None):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.stop_ids = stop_token_ids(generation_config, self.tokenizer)
        self.model_id = model_id
        self.plan_id = plan_id
        self.blocks_active = int(blocks_active)
        self.blocks_total = int(blocks_total)
        self.vision_blocks_active = vision_blocks_active
        self.vision_blocks_total = vision_blocks_total
        self.image_token = int(image_token)
        self.device = device

    # ---- stage methods a backend implements ------------------------------------------
    @abstractmethod
    def _vision(self, pixel_values: np.ndarray) -> Any:
        """pixel_values (B, 3, H, W) float32 -> image features (N, D), backend-native."""

    @abstractmethod
    def _prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray, features) -> tuple[int, Any]:
        """Embed, merge image features, run the decoder over the prompt (batch 1).

        Returns (greedy next token id, decode state)."""

    @abstractmethod
    def _decode(self, state, token: int) -> int:
        """One decoder step on ``token``; updates ``state``; returns the next token id."""

    def close(self) -> None:
        """Release sessions/engines (optional)."""

    # ---- the shared loop -------------------------------------------------------------
    def preprocess(self, image_rgb: np.ndarray, prompt: str) -> dict[str, np.ndarray]:
        from gm_skip_ros.models import build_inputs

        inputs, _ = build_inputs(self.processor, image_rgb, prompt)
        out = {}
        for k in ("input_ids", "attention_mask", "pixel_values"):
            v = inputs[k]
            out[k] = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        out["pixel_values"] = out["pixel_values"].astype(np.float32, copy=False)
        out["input_ids"] = out["input_ids"].astype(np.int64, copy=False)
        out["attention_mask"] = out["attention_mask"].astype(np.int64, copy=False)
        return out

    def generate(self, image_rgb: np.ndarray, prompt: str, max_new_tokens: int = 32, *,
                 ignore_eos: bool = False) -> GenerationResult:
        """Greedy generation for one image (H x W x 3 uint8 RGB) and one prompt.

        ``ignore_eos=True`` always produces ``max_new_tokens`` tokens (benchmarks)."""
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        t0 = time.perf_counter()
        inputs = self.preprocess(image_rgb, prompt)
        t1 = time.perf_counter()
        feats = self._vision(inputs["pixel_values"])
        t2 = time.perf_counter()
        tok, state = self._prefill(inputs["input_ids"], inputs["attention_mask"], feats)
        t3 = time.perf_counter()
        tokens = [tok]
        while len(tokens) < max_new_tokens and (ignore_eos or tok not in self.stop_ids):
            tok = self._decode(state, tok)
            tokens.append(tok)
        t4 = time.perf_counter()
        keep = tokens[:-1] if (not ignore_eos and tokens[-1] in self.stop_ids) else tokens
        text = self.tokenizer.decode(keep, skip_special_tokens=True).strip()
        t5 = time.perf_counter()
        timings = StageTimings(
            preprocess_ms=(t1 - t0) * 1e3, vision_ms=(t2 - t1) * 1e3,
            prefill_ms=(t3 - t2) * 1e3, decode_ms=(t4 - t3) * 1e3, total_ms=(t5 - t0) * 1e3,
            prompt_tokens=int(inputs["input_ids"].shape[1]), new_tokens=len(tokens),
        )
        return GenerationResult(text=text, tokens=tuple(tokens), timings=timings)

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "model_id": self.model_id,
                "plan_id": self.plan_id, "blocks_active": self.blocks_active,
                "blocks_total": self.blocks_total}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model_id={self.model_id!r}, plan_id={self.plan_id!r}, "
                f"blocks={self.blocks_active}/{self.blocks_total}, device={self.device!r})")
