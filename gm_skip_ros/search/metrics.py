"""Task metrics as pure functions.

Every metric takes ``predictions: Sequence[str]`` (one generated text per sample) and
``references: Sequence[Sequence[str]]`` (the acceptable answers per sample) and returns a
float where higher is better. Per-sample scores are available for metrics that are a mean
over samples (``per_sample=True``), which the search uses for exact early stopping.

User metrics: register a function with the same signature,

    from gm_skip_ros.search.metrics import register_metric

    @register_metric("my_metric", per_sample_mean=True)
    def my_metric(predictions, references, per_sample=False): ...

or pass ``--metric my_pkg.my_module:my_metric`` on the CLI (imported by dotted path).
``per_sample_mean=True`` declares that the score is the mean of per-sample scores in
[0, 1]; only such metrics allow the search's exact early stopping.
"""
from __future__ import annotations

import importlib
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gm_skip_ros.errors import GmSkipError

MetricFn = Callable[..., object]

_ARTICLES = {"a", "an", "the"}
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace, snake_case -> words."""
    text = text.lower().replace("_", " ").translate(_PUNCT)
    words = [w for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]],
                per_sample: bool = False):
    """Fraction of predictions equal to one of their references after normalisation."""
    _check(predictions, references)
    scores = [float(normalize_answer(p) in {normalize_answer(r) for r in refs})
              for p, refs in zip(predictions, references)]
    return scores if per_sample else (sum(scores) / len(scores) if scores else 0.0)


def classification_accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]],
                            synonyms: Mapping[str, Sequence[str]] | None = None,
                            per_sample: bool = False):
    """Single-object classification accuracy.

    A prediction is correct when its normalised text equals a normalised reference or a
    synonym of one, or when it *names* exactly one known class and that class is a
    reference ("a red car on the left" -> car). ``synonyms`` maps a class name to its
    synonyms; references are expanded with them.
    """
    _check(predictions, references)
    syn = {normalize_answer(k): {normalize_answer(s) for s in v}
           for k, v in (synonyms or {}).items()}
    vocabulary: dict[str, str] = {}  # any name or synonym -> canonical class
    for cls, names in syn.items():
        vocabulary[cls] = cls
        for name in names:
            vocabulary[name] = cls
    scores = []
    for pred, refs in zip(predictions, references):
        p = normalize_answer(pred)
        accepted = set()
        for r in refs:
            r = normalize_answer(r)
            accepted.add(r)
            accepted |= syn.get(vocabulary.get(r, r), set())
            if r in vocabulary:
                accepted.add(vocabulary[r])
        ok = p in accepted
        if not ok and vocabulary:
            named = {vocabulary[n] for n in _names_in(p, vocabulary)}
            ref_classes = {vocabulary.get(normalize_answer(r), normalize_answer(r)) for r in refs}
            ok = len(named) == 1 and named <= ref_classes
        scores.append(float(ok))
    return scores if per_sample else (sum(scores) / len(scores) if scores else 0.0)


def _names_in(text: str, vocabulary: Mapping[str, str]) -> set[str]:
    padded = f" {text} "
    return {name for name in vocabulary if f" {name} " in padded}


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]],
            per_sample: bool = False):
    """CIDEr-D (x10 scale as in COCO) from pycocoevalcap's scorer, not re-implemented.

    Texts are lower-cased and punctuation-stripped (a stand-in for the PTB tokenizer,
    which needs Java). Note CIDEr's IDF comes from the references of the evaluated set,
    so scores are comparable only on the same set.
    """
    from pycocoevalcap.cider.cider import Cider

    _check(predictions, references)
    if not predictions:
        return [] if per_sample else 0.0
    gts = {i: [normalize_answer(r) or "empty" for r in refs] for i, refs in
           enumerate(references)}
    res = {i: [normalize_answer(p) or "empty"] for i, p in enumerate(predictions)}
    score, scores = Cider().compute_score(gts, res)
    return [float(s) for s in scores] if per_sample else float(score)


@dataclass(frozen=True)
class Metric:
    """A registered metric. ``per_sample_mean``: score = mean of per-sample scores in [0, 1]
    (enables exact early stopping of candidates in the search)."""

    name: str
    fn: MetricFn
    per_sample_mean: bool
    description: str = ""

    def __call__(self, predictions, references, per_sample: bool = False):
        return self.fn(predictions, references, per_sample=per_sample)


_REGISTRY: dict[str, Metric] = {}


def register_metric(name: str, per_sample_mean: bool = False, description: str = ""):
    def deco(fn: MetricFn) -> MetricFn:
        # also on the function: ``--metric module:function`` imports it without the registry
        fn.per_sample_mean = per_sample_mean
        _REGISTRY[name] = Metric(name, fn, per_sample_mean, description or (fn.__doc__ or "")
                                 .strip().split("\n")[0])
        return fn
    return deco


def _accuracy_with_scene_synonyms(predictions, references, per_sample=False):
    """Single-object classification accuracy, driving-scene class synonyms allowed."""
    try:
        from gm_skip_ros.data.scenes import CLASS_SYNONYMS
    except ImportError:  # pragma: no cover - generator not installed
        CLASS_SYNONYMS = {}
    return classification_accuracy(predictions, references, CLASS_SYNONYMS, per_sample)


register_metric("accuracy", True)(_accuracy_with_scene_synonyms)
register_metric("exact_match", True)(exact_match)
register_metric("cider", False)(cider_d)

METRIC_NAMES = tuple(_REGISTRY)


def get_metric(name: str) -> Metric:
    """A registered metric by name, or a user function given as ``module:function``."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if re.fullmatch(r"[\w.]+:\w+", name):
        mod, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise GmSkipError(f"cannot import metric {name!r}: {exc}") from None
        per_sample_mean = bool(getattr(fn, "per_sample_mean", False))
        return Metric(name, fn, per_sample_mean)
    raise GmSkipError(f"unknown metric {name!r}; choose one of {', '.join(_REGISTRY)} or give "
                      "a user metric as module:function")
