"""The latest-frame worker without rclpy: newest frame only, drops counted, rate cap,
errors survived."""
import threading
import time

from gm_skip_ros.ros.latest_frame import LatestFrameWorker


def test_newest_frame_wins_and_older_ones_are_counted_as_dropped():
    gate = threading.Event()
    seen = []

    def process(item):
        seen.append(item)
        gate.wait(5)

    w = LatestFrameWorker(process).start()
    try:
        w.submit(0)
        deadline = time.monotonic() + 5
        while not w.busy and time.monotonic() < deadline:
            time.sleep(0.001)
        assert w.busy
        for i in range(1, 6):  # arrive while frame 0 is processed
            w.submit(i)
        gate.set()
        assert w.wait_idle(5)
    finally:
        w.stop()
    assert seen == [0, 5]
    assert (w.stats.submitted, w.stats.dropped, w.stats.processed) == (6, 4, 2)


def test_rate_cap_spaces_starts_and_drops_frames_in_between():
    starts = []
    w = LatestFrameWorker(lambda item: starts.append((time.monotonic(), item)),
                          max_rate_hz=20.0).start()
    try:
        t_end = time.monotonic() + 0.5
        i = 0
        while time.monotonic() < t_end:  # a 200 Hz producer into a 20 Hz cap
            w.submit(i)
            i += 1
            time.sleep(0.005)
        w.wait_idle(2)
    finally:
        w.stop()
    gaps = [b[0] - a[0] for a, b in zip(starts, starts[1:])]
    assert len(starts) >= 3
    assert min(gaps) >= 0.05 - 0.002  # never faster than the cap
    assert w.stats.dropped > 0
    assert w.stats.submitted == w.stats.dropped + w.stats.processed
    assert starts[-1][1] == i - 1  # the last frame submitted is the one processed last


def test_errors_are_reported_and_the_loop_goes_on():
    errors = []

    def process(item):
        if item == "bad":
            raise ValueError("broken frame")

    w = LatestFrameWorker(process, on_error=lambda item, exc: errors.append((item, str(exc))))
    w.start()
    try:
        w.submit("bad")
        assert w.wait_idle(5)
        w.submit("good")
        assert w.wait_idle(5)
    finally:
        w.stop()
    assert errors == [("bad", "broken frame")]
    assert (w.stats.failed, w.stats.processed) == (1, 1)
    assert w.stats.rejected == 0  # no rejected_exceptions given: every raise is a failure


def test_rejected_and_failed_frames_are_not_counted_as_processed():
    class BadFrame(ValueError):
        pass

    errors = []

    def process(item):
        if item == "bad":
            raise BadFrame("unknown encoding")
        if item == "crash":
            raise RuntimeError("backend failed")

    w = LatestFrameWorker(process, rejected_exceptions=(BadFrame,),
                          on_error=lambda item, exc: errors.append((item, type(exc))))
    w.start()
    try:
        for item in ("bad", "good", "crash", "bad"):
            w.submit(item)
            assert w.wait_idle(5)
    finally:
        w.stop()
    assert errors == [("bad", BadFrame), ("crash", RuntimeError), ("bad", BadFrame)]
    assert (w.stats.submitted, w.stats.processed, w.stats.rejected, w.stats.failed,
            w.stats.dropped) == (4, 1, 2, 1, 0)


def test_stop_drops_pending_and_joins():
    gate = threading.Event()
    finished = []

    def process(item):
        gate.wait(5)
        finished.append(item)

    w = LatestFrameWorker(process).start()
    w.submit(1)
    deadline = time.monotonic() + 5
    while not w.busy and time.monotonic() < deadline:
        time.sleep(0.001)
    assert w.busy
    w.submit(2)  # waits behind frame 1, which is held by the closed gate

    def release_after_stop_dropped_frame_2():
        end = time.monotonic() + 5
        while w.stats.dropped < 1 and time.monotonic() < end:
            time.sleep(0.001)
        gate.set()

    releaser = threading.Thread(target=release_after_stop_dropped_frame_2)
    releaser.start()
    w.stop()  # gate still closed here: frame 2 is pending and must be dropped
    releaser.join(5)
    assert not w._thread.is_alive()
    assert finished == [1]  # stop() waited for frame 1; frame 2 never ran
    assert w.stats.submitted == w.stats.processed + w.stats.dropped
    assert (w.stats.submitted, w.stats.dropped, w.stats.processed, w.stats.failed) == (2, 1, 1, 0)
