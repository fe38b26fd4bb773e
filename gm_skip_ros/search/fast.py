"""Exact speed-ups for the search: the same numbers as :class:`Evaluator`, computed with less work.

:class:`FastEvaluator` is a drop-in replacement for the reference
:class:`~gm_skip_ros.search.evaluate.Evaluator` (``gm-skip search --plain``). It runs the
same ``generate()`` and the same teacher-forced forward on the same inputs; what it saves
is work whose result is known to be identical:

* **Cached vision encoder.** When no vision block is skipped, the vision tower + projector
  output of every calibration frame is the same for every candidate. It is computed once
  per search (``get_image_features``, exactly as ``generate()`` computes it) and handed to
  ``generate()`` and ``forward()`` as ``mm_encoder_outputs`` instead of ``pixel_values``
  (transformers' own pre-encoded input path; families whose model accepts it, Llava
  included). Other families fall back to the pixel path.
* **Prefix reuse.** At a step with base configuration (the blocks already removed), the
  candidate "also skip block c" computes, for the prompt (prefill) and for the
  teacher-forced sequence, exactly what the base configuration computes in every active
  block before c: causal decoder blocks only see the blocks before them. One capture pass
  per step records, for each active block, its prefill output and the key/value tensors it
  writes into the KV cache; a candidate then *replays* the blocks before c (their cache
  entries are written from the record, their output is the recorded tensor) and computes
  only from c onward. Decode steps run every block (the generated tokens differ per
  candidate). Candidate c saves ``position(c)`` block calls in the prefill and in the
  teacher-forced pass: about half of both with a full sweep, most of them with a window.
* **Batching without padding.** Samples whose prompt and prompt+answer lengths are equal
  (the usual case for a fixed question: the image always gives the same number of tokens)
  are run as one batch; no padding token is ever added, so each row computes what it
  computes alone (checked bit for bit in the tests; for the rare kernel where batch size
  changes the summation order, set ``batch_size=1``).
* **Early stopping** (per-sample-mean metrics, as in the reference evaluator): a candidate
  stops as soon as it cannot reach the best metric of the step even with every remaining
  sample correct. For other metrics (CIDEr) it is off: their value is not a bound-able
  mean of per-sample scores.

The per-call bookkeeping (``stats``) says how much each source saved; the search writes
it into the plan's cost section.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence

import torch

from gm_skip_ros.search.evaluate import EvalResult, Evaluator, _progress

log = logging.getLogger(__name__)

_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")


class _Record:
    """What one active block did in the capture pass of one batch."""

    __slots__ = ("gen_out", "gen_updates", "tf_out")

    def __init__(self):
        self.gen_out = None
        self.gen_updates: list = []
        self.tf_out = None


class _Replay:
    """Instance-level forward patches of the blocks before the candidate.

    Armed for exactly one call of the model (a prefill or a teacher-forced forward): each
    patched block writes its recorded KV entries into the cache it is given and returns
    its recorded output; every later call (decode steps) runs the real block.
    """

    def __init__(self, blocks: Sequence[torch.nn.Module]):
        self.blocks = list(blocks)
        self.records: list[_Record] | None = None
        self.kind = ""

    def arm(self, records: list[_Record], kind: str) -> None:
        self.records, self.kind = records, kind
        for pos, blk in enumerate(self.blocks):
            blk.forward = self._make(pos, blk)

    def disarm(self) -> None:
        for blk in self.blocks:
            if "forward" in blk.__dict__:
                del blk.forward
        self.records = None

    def _make(self, pos: int, blk: torch.nn.Module):
        def forward(*args, **kwargs):
            rec = self.records[pos]
            hidden = args[0] if args else kwargs.get("hidden_states")
            out = rec.gen_out if self.kind == "gen" else rec.tf_out
            if out is None or hidden is None or _shape(out)[:2] != tuple(hidden.shape[:2]):
                raise RuntimeError("prefix replay called with inputs of another shape")
            if self.kind == "gen":
                cache = next((kwargs[k] for k in _CACHE_KWARGS if kwargs.get(k) is not None),
                             None)
                if cache is None:
                    raise RuntimeError("prefix replay of a prefill without a KV cache")
                for k, v, idx, a, kw in rec.gen_updates:
                    cache.update(k, v, idx, *a, **kw)
            # one shot: from now on (decode steps) the real block runs
            del blk.forward
            return out

        return forward


def _shape(out) -> tuple:
    t = out[0] if isinstance(out, (tuple, list)) else out
    return tuple(t.shape)


class _Recorder:
    """Patches every active block for one model call and records outputs and KV writes."""

    def __init__(self, blocks: Sequence[torch.nn.Module], records: list[_Record], kind: str):
        self.blocks, self.records, self.kind = list(blocks), records, kind

    def __enter__(self):
        for pos, blk in enumerate(self.blocks):
            blk.forward = self._make(pos, blk)
        return self

    def __exit__(self, *exc):
        for blk in self.blocks:
            if "forward" in blk.__dict__:
                del blk.forward
        return False

    def _make(self, pos: int, blk: torch.nn.Module):
        real = type(blk).forward.__get__(blk)

        def forward(*args, **kwargs):
            rec = self.records[pos]
            cache = next((kwargs[k] for k in _CACHE_KWARGS if kwargs.get(k) is not None), None)
            if self.kind == "gen" and cache is not None:
                orig = cache.update

                def update(k, v, idx, *a, **kw):
                    rec.gen_updates.append((k, v, idx, a, kw))
                    return orig(k, v, idx, *a, **kw)

                cache.update = update
                try:
                    out = real(*args, **kwargs)
                finally:
                    del cache.update
                rec.gen_out = out
            else:
                out = real(*args, **kwargs)
                rec.tf_out = out
            del blk.forward  # record the first call only (the prefill)
            return out

        return forward


class FastEvaluator(Evaluator):
    """:class:`Evaluator` with exact speed-ups (see the module docstring).

    cache_vision: reuse the vision encoder output when no vision block is skipped.
    prefix_reuse: replay the blocks before the candidate (needs :meth:`begin_step`).
    batch_size: samples per model call among samples of equal lengths (1: no batching).
    pad: also batch samples of different lengths, left-padding the prompts for generation
    and right-padding the teacher-forced sequences. Exact in exact arithmetic; in floating
    point a padded row goes through the masked attention path, so its logits can differ
    from the unpadded ones in the last bits (same plan unless two candidates tie to
    within rounding). Off by default.
    prefix_budget_mb: the capture of a step is skipped (no prefix reuse at that step) when
    it would hold more than this many MB of hidden states and KV entries.
    mask: share another evaluator's :class:`SkipMask` of the same model (see Evaluator).
    """

    def __init__(self, vlm, samples, metric, max_new_tokens: int = 16, secondary: str = "nll",
                 progress=None, *, cache_vision: bool = True, prefix_reuse: bool = True,
                 batch_size: int = 8, pad: bool = False, prefix_budget_mb: float = 4096,
                 mask=None):
        super().__init__(vlm, samples, metric, max_new_tokens=max_new_tokens,
                         secondary=secondary, progress=progress, mask=mask)
        if batch_size < 1:
            from gm_skip_ros.errors import GmSkipError

            raise GmSkipError(f"--batch-size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.pad = pad
        tok = self.tokenizer
        self.pad_id = getattr(tok, "pad_token_id", None)
        if self.pad_id is None:
            self.pad_id = getattr(vlm.model.generation_config, "pad_token_id", None) or 0
        self.prefix_reuse = prefix_reuse
        self.prefix_budget = prefix_budget_mb * 2**20
        self.stats: Counter = Counter()
        model = vlm.model
        self._vision_ok = bool(
            cache_vision and getattr(model, "_supports_mm_encoder_outputs", lambda: False)()
            and callable(getattr(getattr(model, "model", None), "get_image_features", None))
            and all(set(p.gen_inputs) == {"input_ids", "attention_mask", "pixel_values"}
                    and torch.equal(p.gen_inputs["pixel_values"], p.tf_inputs["pixel_values"])
                    for p in self._prepared))
        if cache_vision and not self._vision_ok:
            log.info("vision features are not cached for %s (family inputs not supported)",
                     vlm.family.name)
        self._features: list | None = None
        self._batches = self._make_batches()
        self._step: dict | None = None

    def describe(self) -> dict:
        """The speed-ups this evaluator actually uses (for a plan's cost.evaluator): the
        vision cache is off when the family's inputs do not allow it, whatever was asked."""
        return {"mode": "fast", "vision_cache": self._vision_ok,
                "prefix_reuse": self.prefix_reuse, "batch_size": self.batch_size,
                "batch_padding": self.pad}

    # ------------------------------------------------------------------ inputs
    def _make_batches(self) -> list[list[int]]:
        """Indices grouped by identical input shapes, in sample order, <= batch_size each."""
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(self._prepared):
            if self.pad:  # same keys and same image tensor shapes; lengths may differ
                key = tuple((k, tuple(v.shape[1:]) if k.startswith("pixel") else None)
                            for k, v in sorted(p.gen_inputs.items()) if torch.is_tensor(v))
            else:
                key = (tuple((k, tuple(v.shape)) for k, v in sorted(p.gen_inputs.items())
                             if torch.is_tensor(v)),
                       tuple((k, tuple(v.shape)) for k, v in sorted(p.tf_inputs.items())
                             if torch.is_tensor(v)), p.prompt_len)
            groups.setdefault(key, []).append(i)
        batches = []
        for idx in groups.values():
            if self.pad:  # neighbours in length: little padding
                idx = sorted(idx, key=lambda i: (self._len(i, "gen"), self._len(i, "tf"), i))
            batches += [idx[j:j + self.batch_size] for j in range(0, len(idx), self.batch_size)]
        return sorted(batches, key=lambda b: min(b))

    def _len(self, i: int, kind: str) -> int:
        p = self._prepared[i]
        return int((p.gen_inputs if kind == "gen" else p.tf_inputs)["input_ids"].shape[1])

    @torch.no_grad()
    def _ensure_features(self) -> None:
        if self._features is not None or not self._vision_ok:
            return
        enc = self.vlm.model.model.get_image_features
        feats = []
        with self.mask.skipping(decoder=self.mask.skipped[0], vision=()):
            for p in _progress(self._prepared, None, "vision"):
                feats.append(enc(pixel_values=p.gen_inputs["pixel_values"], return_dict=True))
        self._features = feats
        self.stats["vision_encoder_passes"] += len(feats)

    def _mm(self, idx: list[int]):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        pooled = [t for i in idx for t in self._features[i].pooler_output]
        return {"image": BaseModelOutputWithPooling(pooler_output=pooled)}

    def _inputs(self, idx: list[int], kind: str, cached_vision: bool) -> dict:
        src = [(self._prepared[i].gen_inputs if kind == "gen" else self._prepared[i].tf_inputs)
               for i in idx]
        out = {}
        width = max(int(s["input_ids"].shape[1]) for s in src)
        for k in src[0]:
            if cached_vision and k == "pixel_values":
                continue
            v = src[0][k]
            if len(src) == 1 or not torch.is_tensor(v):
                out[k] = v
            elif k.startswith("pixel") or all(s[k].shape[1] == width for s in src):
                out[k] = torch.cat([s[k] for s in src], dim=0)
            else:  # pad the sequence dimension: left for generation, right for scoring
                fill = self.pad_id if k == "input_ids" else 0
                rows = []
                for s_ in src:
                    t = s_[k]
                    pad = t.new_full((t.shape[0], width - t.shape[1]), fill)
                    rows.append(torch.cat([pad, t] if kind == "gen" else [t, pad], dim=1))
                out[k] = torch.cat(rows, dim=0)
        if cached_vision:
            out["mm_encoder_outputs"] = self._mm(idx)
        return out

    # ------------------------------------------------------------------ prefix
    def begin_step(self, decoder_removed: Sequence[int], vision_removed: Sequence[int],
                   candidates: Sequence[tuple[str, int]]) -> None:
        """Record the base configuration's block outputs for this step's candidates."""
        self._step = None
        if not self.prefix_reuse:
            return
        dec = [i for k, i in candidates if k == "decoder"]
        active = [i for i in range(self.mask.num_decoder) if i not in set(decoder_removed)]
        if not dec or max(active.index(i) for i in dec) == 0:
            return
        depth = max(active.index(i) for i in dec)  # blocks ever replayed
        est = self._capture_bytes(depth)
        if est > self.prefix_budget:
            log.info("prefix reuse off at this step: the capture would need %.0f MB (budget "
                     "%.0f MB)", est / 2**20, self.prefix_budget / 2**20)
            self.stats["prefix_skipped_budget"] += 1
            return
        cached_vision = self._vision_ok and not vision_removed
        if cached_vision:
            self._ensure_features()
        records: list[list[_Record]] = []
        with torch.no_grad(), self.mask.skipping(decoder=decoder_removed, vision=vision_removed):
            blocks = list(self.vlm.decoder_blocks)[:depth]
            for idx in self._batches:
                recs = [_Record() for _ in blocks]
                with _Recorder(blocks, recs, "gen"):
                    self.vlm.model.generate(**self._inputs(idx, "gen", cached_vision),
                                            max_new_tokens=1, do_sample=False, num_beams=1)
                if self.secondary == "nll" and self._has_answer(idx):
                    with _Recorder(blocks, recs, "tf"):
                        self.vlm.model(**self._inputs(idx, "tf", cached_vision), use_cache=False)
                    self.forward_passes += len(idx)
                    self.stats["capture_sample_passes"] += len(idx)
                records.append(recs)
                self.forward_passes += len(idx)
                self.stats["capture_sample_passes"] += len(idx)
        self._step = {"decoder": tuple(sorted(decoder_removed)),
                      "vision": tuple(sorted(vision_removed)), "active": active,
                      "records": records}

    def _capture_bytes(self, depth: int) -> float:
        cfg = getattr(self.vlm.model.config, "text_config", self.vlm.model.config)
        h = cfg.hidden_size
        kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
        per_tok = 4 * (h * 2 + 2 * kv * hd)  # gen out + tf out + K + V (float32 upper bound)
        toks = sum(int(p.tf_inputs["input_ids"].shape[1]) for p in self._prepared)
        return float(per_tok * toks * depth)

    def _has_answer(self, idx: list[int]) -> bool:
        return any(self._len(i, "tf") > self._prepared[i].prompt_len for i in idx)

    def _replay_depth(self, decoder_skip: Sequence[int], vision_skip: Sequence[int]) -> int:
        """How many leading active blocks can be replayed for this configuration."""
        st = self._step
        if st is None or tuple(sorted(vision_skip)) != st["vision"]:
            return 0
        extra = set(decoder_skip) - set(st["decoder"])
        if not set(st["decoder"]) <= set(decoder_skip) or len(extra) != 1:
            return 0
        (c,) = extra
        if c not in st["active"]:
            return 0
        return min(st["active"].index(c), len(st["records"][0]) if st["records"] else 0)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, decoder_skip: Sequence[int] = (), vision_skip: Sequence[int] = (),
                 must_reach: float | None = None) -> EvalResult:
        t0 = time.perf_counter()
        passes0 = self.forward_passes
        n = len(self._prepared)
        preds: dict[int, str] = {}
        per: dict[int, float] = {}
        nlls: dict[int, float] = {}
        early = False
        by_sample = self.metric.per_sample_mean
        cached_vision = self._vision_ok and not vision_skip
        if cached_vision:
            self._ensure_features()
        depth = self._replay_depth(decoder_skip, vision_skip) if self._step else 0
        with self.mask.skipping(decoder=decoder_skip, vision=vision_skip):
            replay = _Replay(list(self.vlm.decoder_blocks)[:depth]) if depth else None
            for b, idx in enumerate(self._batches):
                texts = self._generate(idx, cached_vision, replay, b)
                for i, t in zip(idx, texts):
                    preds[i] = t
                if self.secondary == "nll":
                    for i, v in zip(idx, self._nll_batch(idx, cached_vision, replay, b)):
                        nlls[i] = v
                if cached_vision:
                    self.stats["vision_passes_saved"] += len(idx) + (
                        sum(self._len(i, "tf") > self._prepared[i].prompt_len for i in idx)
                        if self.secondary == "nll" else 0)
                if by_sample:
                    scores = self.metric([preds[i] for i in idx],
                                         [self._prepared[i].references for i in idx],
                                         per_sample=True)
                    for i, s in zip(idx, scores):
                        per[i] = float(s)
                    if must_reach is not None and len(per) < n and \
                            (sum(per.values()) + (n - len(per))) / n < must_reach:
                        early = True
                        self.stats["samples_skipped_early_stop"] += n - len(per)
                        break
        order = sorted(preds)
        if by_sample:
            total = sum(per[i] for i in order)
            score = (total + (n - len(per))) / n if early else total / n
        else:
            score = float(self.metric([preds[i] for i in order],
                                      [self._prepared[i].references for i in order]))
        finite = [nlls[i] for i in sorted(nlls) if not math.isnan(nlls[i])]
        return EvalResult(
            score=float(score), nll=float(sum(finite) / len(finite)) if finite else float("nan"),
            predictions=[preds[i] for i in order],
            per_sample=[per[i] for i in order] if by_sample else None,
            per_sample_nll=[nlls[i] for i in sorted(nlls)] if self.secondary == "nll" else None,
            samples_evaluated=len(order), forward_passes=self.forward_passes - passes0,
            wall_s=time.perf_counter() - t0, early_stopped=early,
        )

    def _generate(self, idx: list[int], cached_vision: bool, replay: _Replay | None,
                  b: int) -> list[str]:
        inputs = self._inputs(idx, "gen", cached_vision)
        if replay is not None:
            replay.arm(self._step["records"][b], "gen")
            self.stats["prefix_block_calls_saved"] += len(replay.blocks) * len(idx)
        try:
            out = self.vlm.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                          do_sample=False, num_beams=1)
        finally:
            if replay is not None:
                replay.disarm()
        self.forward_passes += len(idx)
        self.stats["model_calls"] += 1
        self.stats["sample_passes"] += len(idx)
        start = inputs["input_ids"].shape[1]
        return [self.tokenizer.decode(row[start:], skip_special_tokens=True).strip()
                for row in out]

    def _nll_batch(self, idx: list[int], cached_vision: bool, replay: _Replay | None,
                   b: int) -> list[float]:
        if not self._has_answer(idx):
            return [float("nan")] * len(idx)
        inputs = self._inputs(idx, "tf", cached_vision)
        if replay is not None:
            replay.arm(self._step["records"][b], "tf")
            self.stats["prefix_block_calls_saved"] += len(replay.blocks) * len(idx)
        try:
            logits = self.vlm.model(**inputs, use_cache=False).logits
        finally:
            if replay is not None:
                replay.disarm()
        self.forward_passes += len(idx)
        self.stats["model_calls"] += 1
        self.stats["sample_passes"] += len(idx)
        ids = inputs["input_ids"]
        out = []
        for r, i in enumerate(idx):  # rows are right-padded: row r is ids[r, :n]
            plen, n = self._prepared[i].prompt_len, self._len(i, "tf")
            if n <= plen:
                out.append(float("nan"))
                continue
            logp = torch.log_softmax(logits[r, plen - 1:n - 1].float(), dim=-1)
            target = ids[r, plen:n]
            out.append(float(-logp.gather(1, target[:, None]).mean()))
        return out
