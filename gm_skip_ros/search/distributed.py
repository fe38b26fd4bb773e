"""Distributed candidate evaluation on Ray (``gm-skip search --ray-address auto|local``).

Design (one process per GPU or per CPU slice, any number of hosts):

* One Ray **actor per worker** (``num_gpus=1`` on CUDA, ``num_cpus=threads`` on CPU). Each
  actor loads the model once from the model directory (every host needs the same
  directory; the actors report the model identity and a mismatch is refused) and gets the
  calibration samples once (``ray.put``; each actor prepares its inputs and, where the
  family allows, caches the vision features once per search).
* A step: every actor records its prefix capture for the step (prefix reuse), then the
  driver hands the step's candidates out in search order, one per idle actor. When
  submitting a candidate it passes the best metric among the *completed* candidates, so
  early stopping works across actors as in one process.
* ``split="samples"`` instead: every actor holds a contiguous shard of the samples and
  every candidate runs on all shards at once; the driver concatenates the per-sample
  predictions, scores and answer NLLs in sample order and computes the metric and the
  mean NLL exactly as one process does (same values, same summation order). Early
  stopping per shard uses the bound "every other sample correct", which is exact too.
  Better than ``"candidates"`` when there are few candidates per step (a window, late
  steps) or many workers; no prefix capture is computed twice.
* **Deterministic merge**: results are put back in candidate order and the winner is the
  minimum of the same key as in one process (metric, then answer NLL, then reverse order)
  over the fully evaluated candidates. A candidate is only early-stopped when it provably
  cannot reach the metric of another candidate, so the winner, and therefore every
  committed step, is the one the single-process search commits. (Which *losing*
  candidates were cut short depends on completion order; their recorded metric is then an
  upper bound, flagged ``early_stopped``.)

Ray is imported only when this runner is created: a plain search never imports it.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.search.greedy import (
    Block, Candidate, SearchConfig, _key, _split, balanced_score, block_name, pick_best,
)

log = logging.getLogger(__name__)


class _Worker:
    """Body of a Ray actor: one loaded model and one evaluator over all samples."""

    def __init__(self, model_dir: str, samples, metric: str, load_kwargs: dict,
                 ev_kwargs: dict, plain: bool, threads: int):
        import torch

        from gm_skip_ros.models import load_vlm
        from gm_skip_ros.search.metrics import get_metric

        torch.set_num_threads(max(1, threads))
        try:
            import transformers

            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
        except ImportError:  # pragma: no cover
            pass
        self.vlm = load_vlm(model_dir, **load_kwargs)
        m = get_metric(metric)
        if plain:
            from gm_skip_ros.search.evaluate import Evaluator

            self.ev = Evaluator(self.vlm, samples, m, **ev_kwargs)
        else:
            from gm_skip_ros.search.fast import FastEvaluator

            self.ev = FastEvaluator(self.vlm, samples, m, **ev_kwargs)

    def identity(self) -> dict:
        return self.vlm.identity()

    def _delta(self, s0: Counter, p0: int) -> dict:
        s = Counter(getattr(self.ev, "stats", {}))
        s.subtract(s0)
        out = {k: v for k, v in s.items() if v}
        out["forward_passes"] = self.ev.forward_passes - p0
        return out

    def begin_step(self, decoder_removed, vision_removed, candidates) -> dict:
        s0, p0 = Counter(getattr(self.ev, "stats", {})), self.ev.forward_passes
        if hasattr(self.ev, "begin_step"):
            self.ev.begin_step(decoder_removed, vision_removed, candidates)
        return self._delta(s0, p0)

    def evaluate(self, decoder_skip, vision_skip, must_reach, per_sample: bool = False
                 ) -> dict:
        s0, p0 = Counter(getattr(self.ev, "stats", {})), self.ev.forward_passes
        r = self.ev.evaluate(decoder_skip, vision_skip, must_reach=must_reach)
        out = {"score": r.score, "nll": r.nll, "early_stopped": r.early_stopped,
               "wall_s": r.wall_s, "stats": self._delta(s0, p0)}
        if per_sample:
            out.update(predictions=r.predictions, per_sample=r.per_sample,
                       per_sample_nll=r.per_sample_nll)
        return out


class RayRunner:
    """Evaluates each step's candidates on a pool of Ray actors (see module docstring).

    address: "local" starts a private Ray instance on this machine (loopback only);
    "auto" or "ray://host:port" joins an existing cluster.
    workers: number of actors (default: one per GPU, or one per ``threads`` CPUs).
    split: "candidates" (each actor evaluates whole candidates) or "samples" (each actor
    holds a shard of the samples; every candidate runs on all shards).
    Early stopping and the per-sample merge follow ``get_metric(metric).per_sample_mean``.
    """

    def __init__(self, model_dir, samples: Sequence, metric: str, *, address: str = "local",
                 workers: int | None = None, device: str = "cpu", threads: int = 1,
                 load_kwargs: dict | None = None, ev_kwargs: dict | None = None,
                 plain: bool = False, expected_identity: dict | None = None,
                 split: str = "candidates"):
        if split not in ("candidates", "samples"):
            raise GmSkipError(f"--ray-split must be candidates or samples, got {split!r}")
        try:
            import ray
        except ImportError:
            raise GmSkipError("--ray-address needs the ray package: pip install 'ray[default]'"
                              ) from None
        from gm_skip_ros.search.metrics import get_metric

        self.ray = ray
        # from the metric itself, as the evaluators do: a metric that is not a mean of
        # per-sample scores (cider) gets no early stopping and no per-sample merge
        self.per_sample_mean = get_metric(metric).per_sample_mean
        self.split = split
        self.metric = metric
        self.samples = list(samples)
        self._owns = False
        gpu = str(device).startswith("cuda")
        t0 = time.perf_counter()
        if not ray.is_initialized():
            try:
                if address == "local":
                    ncpu = (workers or 2) * max(1, threads)
                    ray.init(num_cpus=ncpu, num_gpus=None if gpu else 0,
                             include_dashboard=False, log_to_driver=False,
                             _node_ip_address="127.0.0.1", configure_logging=False)
                else:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise GmSkipError(f"cannot start or join Ray at {address!r}: "
                                  f"{str(exc).splitlines()[0]}; check the address (auto, "
                                  "local or ray://host:port) and that the cluster is up"
                                  ) from None
            self._owns = True
        res = ray.cluster_resources()
        if workers is None:
            workers = int(res.get("GPU", 0)) if gpu else int(res.get("CPU", 1)) // max(1, threads)
        if workers < 1:
            raise GmSkipError(f"the Ray cluster at {address!r} has no free "
                              f"{'GPU' if gpu else 'CPU'} for a worker; pass --ray-workers")
        opts = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": max(1, threads)}
        actor_cls = ray.remote(_Worker)
        lk = dict(load_kwargs or {})
        lk.setdefault("device", device)
        if split == "samples":
            workers = min(workers, len(self.samples))
            n, k = len(self.samples), workers
            bounds = [n * j // k for j in range(k + 1)]
            shards = [self.samples[bounds[j]:bounds[j + 1]] for j in range(k)]
        else:
            shards = [self.samples] * workers
        refs = {}
        self.shard_sizes = [len(sh) for sh in shards]
        self.actors = []
        for sh in shards:
            key = id(sh)
            if key not in refs:
                refs[key] = ray.put(sh)
            self.actors.append(actor_cls.options(**opts).remote(
                str(model_dir), refs[key], metric, lk, dict(ev_kwargs or {}), plain, threads))
        try:
            ids = ray.get([a.identity.remote() for a in self.actors])
        except ray.exceptions.RayError as exc:
            self.close()
            raise GmSkipError(f"a Ray worker could not load the model from {model_dir}: "
                              f"{str(exc).splitlines()[-1]}; every host needs the same model "
                              "directory at that path") from None
        for ident in ids:
            for k in ("config_sha256", "weights_sha256"):
                if expected_identity and ident.get(k) != expected_identity.get(k):
                    self.close()
                    raise GmSkipError(f"a Ray worker loaded a different model ({k} differs) "
                                      f"from {model_dir}; give every host the same model copy")
        self.workers = workers
        self.startup_s = time.perf_counter() - t0
        log.info("Ray: %d workers ready in %.1f s", workers, self.startup_s)

    def evaluate_candidates(self, cfg: SearchConfig, removed: Sequence[Block],
                            cands: Sequence[Block], m0: float, total: int,
                            progress: Callable | None = None):
        ray = self.ray
        d0, v0 = _split(removed)
        stats: Counter = Counter()
        for s in ray.get([a.begin_step.remote(d0, v0, list(cands)) for a in self.actors]):
            stats.update(s)
        if self.split == "samples":
            return self._sharded(cfg, removed, cands, m0, total, progress, stats)
        results: dict[int, tuple[Candidate, Block]] = {}
        queue = list(enumerate(cands))
        idle = list(self.actors)
        inflight: dict = {}
        best: tuple[Candidate, Block] | None = None
        while queue or inflight:
            while queue and idle:
                pos, b = queue.pop(0)
                actor = idle.pop(0)
                must = best[0].metric if (cfg.early_stop and best is not None
                                          and self.per_sample_mean) else None
                d, v = _split([*removed, b])
                inflight[actor.evaluate.remote(d, v, must)] = (pos, b, actor)
            done, _ = ray.wait(list(inflight), num_returns=1)
            pos, b, actor = inflight.pop(done[0])
            idle.append(actor)
            r = ray.get(done[0])
            stats.update(r["stats"])
            c = Candidate(block_name(b), r["score"], r["nll"],
                          balanced_score(r["score"], m0, len(removed) + 1, total, cfg.balance),
                          r["early_stopped"], r["wall_s"])
            results[pos] = (c, b)
            if not c.early_stopped and (best is None or _key(c, b) < _key(*best)):
                best = (c, b)
            if progress:
                progress(len(removed) + 1, b, c)
        tried = [results[i] for i in range(len(cands))]
        stats["ray_workers"] = self.workers
        return tried, pick_best(tried), {k: v for k, v in stats.items() if v}

    def _sharded(self, cfg, removed, cands, m0, total, progress, stats: Counter):
        """Every candidate on all sample shards at once; exact merge in sample order."""
        from gm_skip_ros.search.metrics import get_metric

        ray = self.ray
        metric = get_metric(self.metric)
        n = len(self.samples)
        tried: list[tuple[Candidate, Block]] = []
        best: tuple[Candidate, Block] | None = None
        for b in cands:
            must = best[0].metric if (cfg.early_stop and best is not None
                                      and self.per_sample_mean) else None
            d, v = _split([*removed, b])
            rs = ray.get([a.evaluate.remote(d, v, self._shard_must(must, ns), True)
                          for a, ns in zip(self.actors, self.shard_sizes)])
            for r in rs:
                stats.update(r["stats"])
            score, nll, early = self._merge(rs, metric, n)
            c = Candidate(block_name(b), score, nll,
                          balanced_score(score, m0, len(removed) + 1, total, cfg.balance),
                          early, max(r["wall_s"] for r in rs))
            tried.append((c, b))
            if not early and (best is None or _key(c, b) < _key(*best)):
                best = (c, b)
            if progress:
                progress(len(removed) + 1, b, c)
        stats["ray_workers"] = self.workers
        return tried, pick_best(tried), {k: v for k, v in stats.items() if v}

    def _shard_must(self, must: float | None, n_shard: int) -> float | None:
        """A shard's early-stop bound: it stops when, with all samples of the other shards
        correct, the candidate still cannot reach ``must``:
        ``(c + r + n - n_s) / n < must``  <=>  ``(c + r) / n_s < (must * n - n + n_s) / n_s``.
        Loosened by 1e-9 so that rounding can only delay a stop, never cause one."""
        if must is None:
            return None
        n = len(self.samples)
        return (must * n - (n - n_shard)) / n_shard - 1e-9

    def _merge(self, rs: list[dict], metric, n: int) -> tuple[float, float, bool]:
        preds = [p for r in rs for p in r["predictions"]]
        early = any(r["early_stopped"] for r in rs)
        if self.per_sample_mean:
            per = [x for r in rs for x in r["per_sample"]]
            score = (sum(per) + (n - len(per))) / n if early else sum(per) / n
        else:
            score = float(metric(preds, [s.answers for s in self.samples]))
        nlls = [x for r in rs for x in (r["per_sample_nll"] or [])]
        finite = [x for x in nlls if x == x]  # drop NaN
        nll = sum(finite) / len(finite) if finite else float("nan")
        return float(score), float(nll), early

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass
        self.actors = []
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
            self._owns = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
