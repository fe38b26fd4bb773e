"""Scoring a (masked) model on samples with a task metric.

For each sample the evaluator runs the same greedy ``generate()`` the deployed model
runs, and scores the generated text with the task metric. As the graded secondary
signal it also computes the answer negative log-likelihood: the mean NLL (nats/token)
of the canonical reference answer under teacher forcing. Inputs are prepared once (the
processor runs once per sample per search), and the mask is switched between
candidates without reloading anything.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gm_skip_ros.data.sample import Sample
from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.models.loading import LoadedVLM, build_inputs
from gm_skip_ros.models.surgery import SkipMask
from gm_skip_ros.search.metrics import Metric


@dataclass
class _Prepared:
    gen_inputs: dict
    tf_inputs: dict
    prompt_len: int
    references: tuple[str, ...]


@dataclass
class EvalResult:
    """Metric and secondary signal of one model configuration on one sample set.

    score: the task metric (higher is better); nll: mean answer NLL over the evaluated
    samples (nats/token, lower is better; NaN when not computed); per_sample: per-sample
    metric scores (metrics that are a mean only); per_sample_nll: per-sample answer NLL
    (in sample order, for exact merging of shards); early_stopped: evaluation was cut short
    because the candidate could no longer win (score is then an upper bound).
    """

    score: float
    nll: float
    predictions: list[str] = field(default_factory=list)
    per_sample: list[float] | None = None
    per_sample_nll: list[float] | None = None
    samples_evaluated: int = 0
    forward_passes: int = 0
    wall_s: float = 0.0
    early_stopped: bool = False


class Evaluator:
    """Evaluate skip configurations of one loaded model on a fixed sample list.

    mask: the :class:`SkipMask` of ``vlm.model`` to switch (default: a new one). Several
    evaluators of one model (calibration and held-out sets) must share one mask: a second
    mask would snapshot the model as the first one left it, and the two would undo each
    other's skips.
    """

    def __init__(self, vlm: LoadedVLM, samples: Sequence[Sample], metric: Metric,
                 max_new_tokens: int = 16, secondary: str = "nll", progress=None, *,
                 mask: SkipMask | None = None):
        if not samples:
            raise GmSkipError("the data set is empty: nothing to evaluate on; check the path, "
                              "the split and the topic names")
        if secondary not in ("nll", "none"):
            raise GmSkipError(f"unknown secondary signal {secondary!r}; use nll or none")
        self.vlm = vlm
        self.metric = metric
        self.max_new_tokens = max_new_tokens
        self.secondary = secondary
        if mask is not None and getattr(getattr(mask, "_rb", None), "model", None) \
                is not vlm.model:
            raise ValueError("mask belongs to another model than the evaluator's")
        self.mask = mask if mask is not None else SkipMask(vlm.model, vlm.family)
        self.tokenizer = getattr(vlm.processor, "tokenizer", vlm.processor)
        self.samples = list(samples)
        self.forward_passes = 0
        self._prepared = [self._prepare(s) for s in _progress(self.samples, progress,
                                                              "preparing inputs")]

    def _prepare(self, s: Sample) -> _Prepared:
        dev = self.vlm.device
        gen, plen = build_inputs(self.vlm.processor, s.image, s.prompt)
        tf, plen2 = build_inputs(self.vlm.processor, s.image, s.prompt, s.answers[0])
        if plen2 != plen:
            raise RuntimeError("prompt tokenisation differs with and without the answer")
        to = lambda d: {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in d.items()}  # noqa
        return _Prepared(to(gen), to(tf), plen, s.answers)

    @torch.no_grad()
    def _predict(self, p: _Prepared) -> str:
        out = self.vlm.model.generate(**p.gen_inputs, max_new_tokens=self.max_new_tokens,
                                      do_sample=False, num_beams=1)
        self.forward_passes += 1
        new = out[0, p.gen_inputs["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()

    @torch.no_grad()
    def _nll(self, p: _Prepared) -> float:
        ids = p.tf_inputs["input_ids"]
        if ids.shape[1] <= p.prompt_len:
            return float("nan")
        logits = self.vlm.model(**p.tf_inputs, use_cache=False).logits
        self.forward_passes += 1
        logp = torch.log_softmax(logits[0, p.prompt_len - 1:-1].float(), dim=-1)
        target = ids[0, p.prompt_len:]
        return float(-logp.gather(1, target[:, None]).mean())

    def evaluate(self, decoder_skip: Sequence[int] = (), vision_skip: Sequence[int] = (),
                 must_reach: float | None = None) -> EvalResult:
        """Score the model with the given blocks skipped (original indices).

        must_reach: for per-sample-mean metrics, stop as soon as the final score can no
        longer reach this value (exact: the remaining samples are assumed all correct).
        """
        t0 = time.perf_counter()
        passes0 = self.forward_passes
        n = len(self._prepared)
        preds: list[str] = []
        per: list[float] = []
        nlls: list[float] = []
        early = False
        by_sample = self.metric.per_sample_mean
        with self.mask.skipping(decoder=decoder_skip, vision=vision_skip):
            for i, p in enumerate(self._prepared):
                pred = self._predict(p)
                preds.append(pred)
                if self.secondary == "nll":
                    nlls.append(self._nll(p))
                if by_sample:
                    per.append(float(self.metric([pred], [p.references], per_sample=True)[0]))
                    if must_reach is not None and i < n - 1 and \
                            (sum(per) + (n - i - 1)) / n < must_reach:
                        early = True
                        break
        if by_sample:
            score = (sum(per) + (n - len(per))) / n if early else sum(per) / n
        else:
            score = float(self.metric(preds, [p.references for p in self._prepared]))
        finite = [x for x in nlls if not math.isnan(x)]
        return EvalResult(
            score=float(score), nll=float(sum(finite) / len(finite)) if finite else float("nan"),
            predictions=preds, per_sample=per if by_sample else None,
            per_sample_nll=nlls if self.secondary == "nll" else None,
            samples_evaluated=len(preds), forward_passes=self.forward_passes - passes0,
            wall_s=time.perf_counter() - t0, early_stopped=early,
        )

    @torch.no_grad()
    def block_influence(self) -> list[float]:
        """ShortGPT Block Influence per decoder block: ``1 - mean cos(x_in, x_out)`` over
        all tokens of the calibration inputs (prompt + answer), one unmasked pass each.
        Inputs and outputs are captured with forward hooks on the blocks themselves."""
        self.mask.restore()
        blocks = list(self.vlm.decoder_blocks)
        sums = torch.zeros(len(blocks), dtype=torch.float64)
        count = 0
        captured: dict[int, torch.Tensor] = {}
        handles = []

        def make_hooks(i):
            def pre(_m, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                captured[i] = x[0].float()

            def post(_m, _args, out):
                y = (out[0] if isinstance(out, tuple) else out)[0].float()
                cos = torch.nn.functional.cosine_similarity(captured[i], y, dim=-1)
                sums[i] += float((1 - cos).sum())
            return pre, post

        for i, b in enumerate(blocks):
            pre, post = make_hooks(i)
            handles.append(b.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(b.register_forward_hook(post))
        try:
            for p in self._prepared:
                self.vlm.model(**p.tf_inputs, use_cache=False)
                self.forward_passes += 1
                count += int(p.tf_inputs["input_ids"].shape[1])
        finally:
            for h in handles:
                h.remove()
        return (sums / max(count, 1)).tolist()


def _progress(items, progress, desc):
    if progress is None or progress is False:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, disable=not progress)
