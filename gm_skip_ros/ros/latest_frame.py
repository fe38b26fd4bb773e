"""A one-slot mailbox and the worker thread that drains it: the node's inference loop.

The subscription callback calls :meth:`LatestFrameWorker.submit`, which only stores the
frame; a frame still waiting there is replaced (dropped and counted), never queued. The
worker thread takes the newest frame, waits if needed so that inferences start at most
``max_rate_hz`` times per second, and calls ``process(frame)``. An exception from
``process`` is counted (``rejected`` for the ``rejected_exceptions`` types, else
``failed``; never ``processed``), handed to ``on_error`` and the loop goes on. No rclpy here.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    """Counters since start: frames submitted, dropped unprocessed (replaced by a newer
    one, or pending at stop), processed (``process`` returned), rejected (it raised one of
    the worker's ``rejected_exceptions``) and failed (it raised anything else). Once idle,
    submitted == dropped + processed + rejected + failed."""

    submitted: int = 0
    dropped: int = 0
    processed: int = 0
    failed: int = 0
    rejected: int = 0


class LatestFrameWorker:
    """Run ``process`` on the newest submitted item in a background thread.

    ``max_rate_hz`` (> 0) caps how often ``process`` starts; 0 means no cap. It can be
    changed while running (:attr:`max_rate_hz`). ``clock`` is only for callers that need
    another time source; it defaults to the monotonic clock. An exception of one of the
    ``rejected_exceptions`` types counts as ``rejected`` (a bad input), any other as
    ``failed``; both go to ``on_error``.
    """

    def __init__(self, process: Callable[[Any], Any], *, max_rate_hz: float = 0.0,
                 on_error: Callable[[Any, BaseException], None] | None = None,
                 rejected_exceptions: tuple[type[BaseException], ...] = (),
                 name: str = "latest-frame-worker",
                 clock: Callable[[], float] = time.monotonic):
        self._process = process
        self._on_error = on_error
        self._rejected_exceptions = tuple(rejected_exceptions)
        self._clock = clock
        self.max_rate_hz = float(max_rate_hz)
        self._cond = threading.Condition()
        self._pending: Any = None
        self._has_pending = False
        self._running = False
        self._busy = False
        self._last_start: float | None = None
        self.stats = WorkerStats()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    # ---- producer side (subscription callback) ------------------------------------------
    def submit(self, item: Any) -> bool:
        """Store ``item`` as the newest frame. Returns False if it replaced an older frame
        that was still waiting (that one is counted as dropped)."""
        with self._cond:
            self.stats.submitted += 1
            replaced = self._has_pending
            if replaced:
                self.stats.dropped += 1
            self._pending = item
            self._has_pending = True
            self._cond.notify()
        return not replaced

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> "LatestFrameWorker":
        with self._cond:
            self._running = True
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop after the item being processed (if any); a waiting item is dropped."""
        with self._cond:
            self._running = False
            if self._has_pending:
                self.stats.dropped += 1
                self._pending, self._has_pending = None, False
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def busy(self) -> bool:
        """True while ``process`` runs."""
        with self._cond:
            return self._busy

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is pending or running (True), or ``timeout`` s pass (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._has_pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # ---- worker thread -------------------------------------------------------------------
    def _next_start(self) -> float:
        if self._last_start is None or self.max_rate_hz <= 0:
            return float("-inf")
        return self._last_start + 1.0 / self.max_rate_hz

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and not self._has_pending:
                    self._cond.wait()
                if not self._running:
                    return
                # rate cap: wait, letting newer frames replace the pending one meanwhile
                while self._running:
                    wait = self._next_start() - self._clock()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if not self._running:
                    return
                item, self._pending, self._has_pending = self._pending, None, False
                self._busy = True
                self._last_start = self._clock()
            try:
                self._process(item)
            except BaseException as exc:  # noqa: BLE001 - the loop must survive any frame
                with self._cond:
                    if isinstance(exc, self._rejected_exceptions):
                        self.stats.rejected += 1
                    else:
                        self.stats.failed += 1
                if self._on_error is not None:
                    try:
                        self._on_error(item, exc)
                    except Exception:  # noqa: BLE001
                        log.exception("on_error handler failed")
                else:
                    log.exception("processing a frame failed")
            else:
                with self._cond:
                    self.stats.processed += 1
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
