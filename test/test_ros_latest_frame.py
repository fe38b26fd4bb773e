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


def test_stop_drops_pending_and_joins():
    gate = threading.Event()
    w = LatestFrameWorker(lambda item: gate.wait(5)).start()
    w.submit(1)
    while not w.busy:
        time.sleep(0.001)
    w.submit(2)
    gate.set()
    w.stop()
    assert not w._thread.is_alive()
    assert w.stats.submitted == w.stats.processed + w.stats.dropped
