"""The GM-Skip greedy search (arXiv 2508.18227) and the baselines, in one harness.

GM-Skip, as implemented here:

1. Score the unpruned model on the calibration set with the task metric: ``m0``.
2. At each step, every *eligible* block is tried as the next one to skip (with the
   blocks already removed kept skipped). Eligibility follows the paper's reverse-order
   deletion: candidates run from the last remaining block toward the first, blocks with
   original index < ``protect_first`` are never removed (they carry the vision-language
   alignment), and ``window`` (optional) limits candidates to the last ``window``
   remaining blocks.
3. The candidate with the best balanced objective is committed. Within one step every
   candidate has the same sparsity, so this is the best metric; ties (common: accuracy
   is flat across many blocks) are broken by the graded secondary signal (lower answer
   NLL), then by reverse order (the later block goes first).
4. Every step is recorded (blocks removed so far, metric, NLL, balanced score, every
   candidate with its scores), so any operating point can be chosen later.

Score-sparsity balance, with ``s = removed / N`` and weight ``balance`` = lambda in [0, 1]:

    J = (1 - lambda) * m / m0 + lambda * s        (m / m0 -> m when m0 == 0)

The *operating point* written to the plan is the step with the largest J among the
steps whose metric is at least ``min_relative_metric * m0`` (ties: the sparser step).
lambda = 0 keeps the best-scoring step; lambda = 0.5 accepts removing one more block
when it costs less than 1/N of the relative metric.

Stopping rules: ``target_sparsity`` reached, the best candidate below
``min_relative_metric * m0`` (that step is recorded but not eligible as operating point),
``max_steps``, or no eligible block left.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.search.evaluate import EvalResult, Evaluator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchConfig:
    """Parameters of the GM-Skip search (all recorded in the plan)."""

    metric: str = "accuracy"
    balance: float = 0.5
    protect_first: int = 1
    window: int | None = None
    target_sparsity: float | None = None
    min_relative_metric: float = 0.9
    max_steps: int | None = None
    secondary: str = "nll"
    scope: str = "decoder"  # "decoder" or "decoder+vision"
    protect_first_vision: int = 1
    max_new_tokens: int = 16
    early_stop: bool = True
    full_curve: bool = False  # keep going past min_relative_metric to record the whole curve

    def validate(self, n_decoder: int, n_vision: int) -> None:
        if not 0.0 <= self.balance <= 1.0:
            raise GmSkipError(f"--balance must be in [0, 1], got {self.balance}")
        if self.protect_first < 0:
            raise GmSkipError(f"--protect-first must be >= 0, got {self.protect_first}")
        if self.protect_first >= n_decoder:
            raise GmSkipError(
                f"--protect-first {self.protect_first} protects all {n_decoder} decoder blocks: "
                f"nothing is eligible for removal; use a value below {n_decoder}")
        if self.window is not None and self.window < 1:
            raise GmSkipError(f"--window must be >= 1, got {self.window}")
        if self.target_sparsity is not None and not 0 < self.target_sparsity < 1:
            raise GmSkipError(f"--target-sparsity must be in (0, 1), got {self.target_sparsity}")
        if not 0 <= self.min_relative_metric <= 1.5:
            raise GmSkipError("--min-relative-metric must be in [0, 1.5], got "
                              f"{self.min_relative_metric}")
        if self.scope not in ("decoder", "decoder+vision"):
            raise GmSkipError(f"--scope must be decoder or decoder+vision, got {self.scope!r}")
        if self.scope == "decoder+vision" and n_vision == 0:
            raise GmSkipError("--scope decoder+vision but the model has no vision block path")
        if self.max_new_tokens < 1:
            raise GmSkipError("--max-new-tokens must be >= 1")


Block = tuple[str, int]  # ("decoder", 11) / ("vision", 3), original indices


def block_name(b: Block) -> str:
    return f"{b[0]}:{b[1]}"


def parse_block(s: str) -> Block:
    kind, _, idx = s.partition(":")
    return kind, int(idx)


def balanced_score(metric: float, m0: float, removed: int, total: int, balance: float) -> float:
    rel = metric / m0 if m0 > 0 else metric
    return (1.0 - balance) * rel + balance * (removed / total)


def _split(blocks: Sequence[Block]) -> tuple[list[int], list[int]]:
    return ([i for k, i in blocks if k == "decoder"], [i for k, i in blocks if k == "vision"])


def eligible_blocks(cfg: SearchConfig, n_dec: int, n_vis: int, removed: Sequence[Block]
                    ) -> list[Block]:
    """Candidates of one step, in reverse order (last block first), decoder then vision."""
    out: list[Block] = []
    stacks = [("decoder", n_dec, cfg.protect_first)]
    if cfg.scope == "decoder+vision":
        stacks.append(("vision", n_vis, cfg.protect_first_vision))
    for kind, n, protect in stacks:
        gone = {i for k, i in removed if k == kind}
        remaining = [i for i in range(n) if i not in gone]
        if len(remaining) <= 1:
            continue
        window = remaining[-cfg.window:] if cfg.window else remaining
        out += [(kind, i) for i in reversed(window) if i >= protect]
    return out


@dataclass
class Candidate:
    block: str
    metric: float
    nll: float
    balanced: float
    early_stopped: bool = False
    wall_s: float = 0.0


@dataclass
class Step:
    """State after ``step`` removals (step 0 = the unpruned model)."""

    step: int
    removed: list[str]
    decoder_blocks_kept: int
    vision_blocks_kept: int
    metric: float
    relative_metric: float
    nll: float
    balanced: float
    candidates: list[Candidate] = field(default_factory=list)
    forward_passes: int = 0
    wall_s: float = 0.0
    meets_min_metric: bool = True
    speedups: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "Step":
        d = dict(d)
        d["candidates"] = [Candidate(**c) for c in d.get("candidates", [])]
        return cls(**d)


@dataclass
class SearchResult:
    method: str
    steps: list[Step]
    operating_step: int
    config: dict
    wall_s: float
    forward_passes: int

    @property
    def removal_order(self) -> list[str]:
        return self.steps[-1].removed if self.steps else []

    def to_dict(self) -> dict:
        return {"method": self.method, "config": self.config,
                "steps": [asdict(s) for s in self.steps], "operating_step": self.operating_step,
                "wall_s": self.wall_s, "forward_passes": self.forward_passes}


def _key(c: Candidate, b: Block) -> tuple:
    """Sort key: best first. Metric desc, NLL asc, decoder before vision, later block first."""
    nll = c.nll if not math.isnan(c.nll) else math.inf
    return (-c.metric, nll, 0 if b[0] == "decoder" else 1, -b[1])


def _make_step(k: int, removed: list[Block], res: EvalResult, m0: float, n_dec: int, n_vis: int,
               cfg: SearchConfig, total: int) -> Step:
    d, v = _split(removed)
    rel = res.score / m0 if m0 > 0 else float("nan")
    return Step(
        step=k, removed=[block_name(b) for b in removed], decoder_blocks_kept=n_dec - len(d),
        vision_blocks_kept=n_vis - len(v), metric=res.score, relative_metric=rel, nll=res.nll,
        balanced=balanced_score(res.score, m0, len(removed), total, cfg.balance),
        meets_min_metric=(m0 <= 0 or res.score >= cfg.min_relative_metric * m0 - 1e-12),
    )


def choose_operating_step(steps: Sequence[Step]) -> int:
    ok = [s for s in steps if s.meets_min_metric] or list(steps[:1])
    return max(ok, key=lambda s: (round(s.balanced, 12), s.step)).step


def _stats(ev) -> Counter:
    return Counter(getattr(ev, "stats", {}))


def evaluate_candidates(ev: Evaluator, cfg: SearchConfig, removed: Sequence[Block],
                        cands: Sequence[Block], m0: float, total: int,
                        progress: Callable | None = None
                        ) -> tuple[list[tuple[Candidate, Block]], tuple[Candidate, Block], dict]:
    """Evaluate one step's candidates in order in this process; return (tried, best, stats).

    Early stopping: a candidate stops once it cannot reach the best metric so far (exact:
    it cannot be the winner, whose metric is the maximum)."""
    s0 = _stats(ev)
    d0, v0 = _split(removed)
    if hasattr(ev, "begin_step"):
        ev.begin_step(d0, v0, cands)
    best: tuple[Candidate, Block] | None = None
    tried: list[tuple[Candidate, Block]] = []
    for b in cands:
        must = None
        if cfg.early_stop and best is not None and ev.metric.per_sample_mean:
            must = best[0].metric
        d, v = _split([*removed, b])
        r = ev.evaluate(d, v, must_reach=must)
        c = Candidate(block_name(b), r.score, r.nll,
                      balanced_score(r.score, m0, len(removed) + 1, total, cfg.balance),
                      r.early_stopped, r.wall_s)
        tried.append((c, b))
        if not r.early_stopped and (best is None or _key(c, b) < _key(*best)):
            best = (c, b)
        if progress:
            progress(len(removed) + 1, b, c)
    assert best is not None
    stats = _stats(ev)
    stats.subtract(s0)
    return tried, best, {k: v for k, v in stats.items() if v}


def pick_best(tried: Sequence[tuple[Candidate, Block]]) -> tuple[Candidate, Block]:
    """The winner among fully evaluated candidates (the merge rule of every runner)."""
    full = [t for t in tried if not t[0].early_stopped]
    return min(full, key=lambda t: _key(*t))


def gm_skip_search(ev: Evaluator, cfg: SearchConfig, progress: Callable | None = None, *,
                   runner=None, state: dict | None = None,
                   on_step: Callable[[list[Step], float, int], None] | None = None
                   ) -> SearchResult:
    """Run the GM-Skip greedy search with ``ev`` (see module docstring).

    runner: evaluates a step's candidates elsewhere (e.g. on Ray); has
    ``evaluate_candidates(cfg, removed, cands, m0, total, progress)`` returning what
    :func:`evaluate_candidates` returns (its stats with a ``forward_passes`` count).
    state: a saved state ({"steps": [...], "wall_s": ...}) to continue from.
    on_step(steps, wall_s, forward_passes): called after every completed step (step 0
    included), e.g. to save the state.
    """
    n_dec, n_vis = ev.mask.num_decoder, ev.mask.num_vision
    cfg.validate(n_dec, n_vis)
    total = n_dec + (n_vis if cfg.scope == "decoder+vision" else 0)
    t_start = time.perf_counter()
    wall0 = 0.0
    if state:
        steps = [Step.from_dict(s) for s in state["steps"]]
        wall0 = float(state.get("wall_s", 0.0))
        m0 = steps[0].metric
        log.info("resuming after step %d", steps[-1].step)
    else:
        s0 = _stats(ev)
        base = ev.evaluate()
        m0 = base.score
        steps = [_make_step(0, [], base, m0, n_dec, n_vis, cfg, total)]
        steps[0].forward_passes, steps[0].wall_s = base.forward_passes, base.wall_s
        sp = _stats(ev)
        sp.subtract(s0)
        steps[0].speedups = {k: v for k, v in sp.items() if v}
        log.info("unpruned: %s=%.4f nll=%.4f", cfg.metric, m0, base.nll)
        if on_step:
            on_step(steps, time.perf_counter() - t_start, _total_passes(steps))
    removed: list[Block] = [parse_block(x) for x in steps[-1].removed]
    while True:
        if len(steps) > 1 and not steps[-1].meets_min_metric and not cfg.full_curve:
            break
        if cfg.max_steps is not None and len(removed) >= cfg.max_steps:
            break
        if cfg.target_sparsity is not None and len(removed) / total >= cfg.target_sparsity - 1e-12:
            break
        cands = eligible_blocks(cfg, n_dec, n_vis, removed)
        if not cands:
            break
        t_step, p_step = time.perf_counter(), ev.forward_passes
        if runner is None:
            tried, best, sp = evaluate_candidates(ev, cfg, removed, cands, m0, total, progress)
            passes = ev.forward_passes - p_step
        else:
            tried, best, sp = runner.evaluate_candidates(cfg, removed, cands, m0, total,
                                                         progress)
            passes = int(sp.get("forward_passes", 0))
        sp = {k: v for k, v in sp.items() if k != "forward_passes"}
        sp["early_stopped_candidates"] = sum(1 for c, _ in tried if c.early_stopped)
        removed.append(best[1])
        d, v = _split(removed)
        step = Step(
            step=len(removed), removed=[block_name(x) for x in removed],
            decoder_blocks_kept=n_dec - len(d), vision_blocks_kept=n_vis - len(v),
            metric=best[0].metric, relative_metric=best[0].metric / m0 if m0 > 0 else math.nan,
            nll=best[0].nll, balanced=best[0].balanced,
            candidates=[c for c, _ in tried], forward_passes=passes,
            wall_s=time.perf_counter() - t_step,
            meets_min_metric=(m0 <= 0 or best[0].metric >= cfg.min_relative_metric * m0 - 1e-12),
            speedups=sp,
        )
        steps.append(step)
        log.info("step %d: skip %s -> %s=%.4f nll=%.4f (%d candidates, %.1fs)", step.step,
                 block_name(best[1]), cfg.metric, step.metric, step.nll, len(tried), step.wall_s)
        if on_step:
            on_step(steps, wall0 + time.perf_counter() - t_start, _total_passes(steps))
    return SearchResult("gm_skip", steps, choose_operating_step(steps), asdict(cfg),
                        wall0 + time.perf_counter() - t_start, _total_passes(steps))


def _total_passes(steps: Sequence[Step]) -> int:
    return sum(s.forward_passes for s in steps)


# --------------------------------------------------------------------------------------
# Baselines: each yields a removal order; curves are then measured in the same harness.

def drop_last_order(n_dec: int, protect_first: int = 0) -> list[Block]:
    """Drop-the-last-k: remove blocks from the end."""
    return [("decoder", i) for i in range(n_dec - 1, protect_first - 1, -1)]


def block_influence_order(ev: Evaluator, protect_first: int = 0) -> tuple[list[Block], list]:
    """ShortGPT: remove blocks in increasing Block Influence (one calibration pass)."""
    bi = ev.block_influence()
    order = sorted((i for i in range(len(bi)) if i >= protect_first), key=lambda i: (bi[i], -i))
    return [("decoder", i) for i in order], bi


def sleb_order(ev: Evaluator, k: int, protect_first: int = 0) -> list[Block]:
    """SLEB-style greedy: at each step remove the block whose removal gives the lowest
    answer NLL (all remaining blocks are candidates, no reverse-order rule)."""
    removed: list[int] = []
    n = ev.mask.num_decoder
    for _ in range(k):
        best = None
        for i in range(n - 1, protect_first - 1, -1):
            if i in removed:
                continue
            nll = _nll_only(ev, [*removed, i])
            if best is None or nll < best[0]:
                best = (nll, i)
        if best is None:
            break
        removed.append(best[1])
    return [("decoder", i) for i in removed]


def _nll_only(ev: Evaluator, decoder_skip: list[int]) -> float:
    vals = []
    with ev.mask.skipping(decoder=decoder_skip):
        for p in ev._prepared:
            vals.append(ev._nll(p))
    vals = [v for v in vals if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.inf


def curve_for_order(ev: Evaluator, order: Sequence[Block], ks: Sequence[int]) -> list[dict]:
    """Metric after removing the first k blocks of ``order``, for each k in ``ks``."""
    out = []
    for k in ks:
        if k > len(order):
            continue
        d, v = _split(order[:k])
        r = ev.evaluate(d, v)
        out.append({"k": k, "removed": [block_name(b) for b in order[:k]], "metric": r.score,
                    "nll": r.nll})
    return out
