"""vlm_node as its own process, over real rclpy and Fast DDS (loopback, own domain).

One node process serves the tests of this module (tiny random Llava on CPU); the
compressed-image and bad-parameter tests start their own.
"""
import statistics
import time

import numpy as np
import pytest

from ros_support import RosClient, ros_env, start_vlm_node, test_domain_id

pytestmark = [pytest.mark.ros, pytest.mark.slow]

CAMERA = "/test_camera/image"
NODE = "/vlm_node"


def _image(seq: int, stamp_ns: int, width=64, height=48, encoding="rgb8", **over):
    from sensor_msgs.msg import Image

    rng = np.random.default_rng(seq)
    data = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8).tobytes()
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0,
                step=width * 3, data=data)
    msg.header.frame_id = f"camera0/frame{seq}"
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    for k, v in over.items():
        setattr(msg, k, v)
    return msg


def _status_values(arr):
    st = arr.status[0]
    return st, {kv.key: kv.value for kv in st.values}


@pytest.fixture(scope="module")
def domain():
    return test_domain_id(offset=1)


@pytest.fixture(scope="module")
def node_proc(tiny_llava_dir, tmp_path_factory, domain):
    log = tmp_path_factory.mktemp("vlm_node") / "vlm_node.log"
    proc = start_vlm_node(
        tiny_llava_dir, log, ros_env(domain),
        "num_threads:=1", "max_new_tokens:=48", "max_inference_rate_hz:=0.0",
        "latency_budget_ms:=60000.0", "max_image_pixels:=100000",
        "diagnostics_period_s:=0.2",
        remap=(f"{NODE}/input/image:={CAMERA}",))
    yield proc
    code = proc.stop()
    assert code == 0, f"vlm_node did not exit cleanly ({code}):\n{proc.output()[-3000:]}"


@pytest.fixture(scope="module")
def client(node_proc, domain):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from gm_skip_ros.msg import Float64Stamped, SceneDescription

    c = RosClient(domain)
    c.pub = c.node.create_publisher(Image, CAMERA, 10)
    c.desc = c.collect(SceneDescription, f"{NODE}/output/scene_description")
    c.proc_t = c.collect(Float64Stamped, f"{NODE}/debug/processing_time_ms")
    c.cyc_t = c.collect(Float64Stamped, f"{NODE}/debug/cyclic_time_ms")
    c.lat = c.collect(Float64Stamped, f"{NODE}/debug/pipeline_latency_ms")
    c.diag = c.collect(DiagnosticArray, "/diagnostics")
    ready = c.spin_until(
        lambda: c.pub.get_subscription_count() > 0
        and c.node.count_publishers(f"{NODE}/output/scene_description") > 0
        and not node_proc.proc.poll(), 120)
    assert ready and node_proc.alive(), f"vlm_node not up:\n{node_proc.output()[-3000:]}"
    c.spin_for(0.5)  # let the reverse direction (node -> client) match as well
    yield c
    c.close()


def _now_ns(c) -> int:
    return c.node.get_clock().now().nanoseconds


def _send_and_wait(c, msg, timeout=60.0):
    """Publish one frame and wait for the description carrying its header."""
    c.pub.publish(msg)
    key = (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id)

    def found():
        return any((d.header.stamp.sec, d.header.stamp.nanosec, d.header.frame_id) == key
                   for _, d in c.desc)
    return c.spin_until(found, timeout)


def test_description_carries_input_header_and_outputs_are_sane(client, node_proc):
    sent = []
    for seq in range(4):
        msg = _image(seq, _now_ns(client))
        assert _send_and_wait(client, msg), node_proc.output()[-3000:]
        sent.append(msg)
    by_frame = {d.header.frame_id: d for _, d in client.desc}
    for msg in sent:
        d = by_frame[msg.header.frame_id]
        assert d.header.stamp == msg.header.stamp
        assert isinstance(d.text, str) and d.tokens_generated >= 1
        assert d.prompt == "Describe the scene." and d.backend == "torch"
        assert d.model_id.startswith("tiny_llava") and d.plan_id
        assert d.blocks_active == d.blocks_total == 6
        parts = d.preprocess_ms + d.vision_ms + d.prefill_ms + d.decode_ms
        assert 0 < parts <= d.total_ms * 1.01
    client.spin_until(lambda: len(client.lat) >= 4 and len(client.proc_t) >= 4, 10)
    lat = [m.data for _, m in client.lat]
    proc = [m.data for _, m in client.proc_t]
    assert all(p > 0 for p in proc) and all(x > 0 for x in lat)
    # the latency of a frame includes its own processing (same clock on one host)
    assert max(lat) >= min(proc)
    assert all(m.data > 0 for _, m in client.cyc_t)
    assert client.spin_until(lambda: client.diag and int(
        _status_values(client.diag[-1][1])[1]["frames_processed"]) >= 4, 10)
    st, values = _status_values(client.diag[-1][1])
    assert st.name == "vlm_node: scene description" and st.hardware_id == "gm_skip_ros"
    assert values["backend"] == "torch" and values["model_id"] == by_frame[
        sent[0].header.frame_id].model_id
    assert int(values["frames_received"]) >= 4 and int(values["frames_processed"]) >= 4
    assert st.level == st.OK, st.message


def test_fast_camera_into_slow_model_drops_frames_instead_of_queueing(client, node_proc):
    client.spin_for(0.5)
    n_before = len(client.desc)
    lat_before = len(client.lat)
    sent_stamps = set()
    period = 1 / 30
    t0 = time.monotonic()
    seq = 1000
    while time.monotonic() - t0 < 4.0:  # a 30 Hz camera for 4 s
        msg = _image(seq, _now_ns(client))
        sent_stamps.add((msg.header.stamp.sec, msg.header.stamp.nanosec))
        client.pub.publish(msg)
        seq += 1
        next_t = t0 + (seq - 1000) * period
        client.spin_until(lambda: time.monotonic() >= next_t, 1.0)
    client.spin_for(2.0)  # let the last inference finish
    descs = [d for _, d in client.desc[n_before:]]
    n_sent = seq - 1000
    assert descs, node_proc.output()[-3000:]
    assert all((d.header.stamp.sec, d.header.stamp.nanosec) in sent_stamps for d in descs)
    stamps = [(d.header.stamp.sec, d.header.stamp.nanosec) for d in descs]
    assert stamps == sorted(stamps), "descriptions must come in frame order (newest only)"
    proc = [m.data for _, m in client.proc_t[lat_before:]]
    lat = [m.data for _, m in client.lat[lat_before:]]
    # the model is slower than the camera, so frames had to be dropped ...
    assert statistics.median(proc) > period * 1e3, "model not slower than the camera"
    assert len(descs) < n_sent
    # ... and no backlog: a frame waits at most for the inference in progress, so its
    # latency stays within about two processing times instead of growing with the run
    late = lat[len(lat) // 2:]
    assert max(late) < 3 * max(proc) + 250, (lat, proc)
    _, values = _status_values(client.diag[-1][1])
    assert int(values["frames_dropped"]) > 0
    received = int(values["frames_received"])
    assert received >= len(descs)
    assert (int(values["frames_processed"]) + int(values["frames_dropped"])
            + int(values["frames_rejected"])) <= received


@pytest.mark.parametrize("bad", ["unknown_encoding", "short_data", "empty", "too_large",
                                 "bad_step"])
def test_bad_frame_is_counted_and_the_node_keeps_answering(client, node_proc, bad):
    stamp = _now_ns(client)
    bad_msg = {
        "unknown_encoding": lambda: _image(1, stamp, encoding="bayer_weird42"),
        "short_data": lambda: _image(2, stamp, data=bytes(100)),
        "empty": lambda: _image(3, stamp, width=0, height=0, step=0, data=b""),
        "too_large": lambda: _image(4, stamp, width=400, height=300),  # > max_image_pixels
        "bad_step": lambda: _image(5, stamp, step=10),
    }[bad]()
    client.spin_for(0.5)  # the previous test's last frame is counted by now
    assert client.diag
    before = _status_values(client.diag[-1][1])[1]
    client.pub.publish(bad_msg)

    def counted():
        return any(_status_values(a)[1].get(f"frames_rejected_{bad}", "0") != "0"
                   for _, a in client.diag)
    assert client.spin_until(counted, 30), node_proc.output()[-3000:]
    assert node_proc.alive()
    assert any(_status_values(a)[0].level == a.status[0].WARN for _, a in client.diag)
    client.spin_for(0.5)  # a few more diagnostics periods
    after = _status_values(client.diag[-1][1])[1]
    # a rejected frame is counted as rejected only: not processed, not a backend failure
    assert int(after["frames_rejected"]) == int(before["frames_rejected"]) + 1
    assert int(after["frames_processed"]) == int(before["frames_processed"]), (before, after)
    assert after["frames_failed"] == before["frames_failed"] == "0"
    assert after["backend_errors"] == "0"
    good = _image(99, _now_ns(client))
    assert _send_and_wait(client, good), node_proc.output()[-3000:]
    assert "frame rejected" in node_proc.output()


@pytest.mark.parametrize("bad", ["unknown_encoding", "short_data", "empty", "too_large",
                                 "bad_step"])
def test_cv_bridge_path_refuses_what_raw_to_rgb_refuses(bad):
    """Where cv_bridge is used, every bad frame is refused before cv_bridge sees it."""
    from types import SimpleNamespace

    from gm_skip_ros.data.image_conversion import ImageConversionError
    from gm_skip_ros.ros.vlm_node import VlmNode

    seen = []

    class FakeBridge:
        def imgmsg_to_cv2(self, msg, encoding):
            seen.append(msg)
            return np.zeros((msg.height, msg.width, 3), np.uint8)

    node = SimpleNamespace(_values={"max_image_pixels": 100000}, _bridge=FakeBridge())
    bad_msg = {
        "unknown_encoding": lambda: _image(1, 0, encoding="bayer_weird42"),
        "short_data": lambda: _image(2, 0, data=bytes(100)),
        "empty": lambda: _image(3, 0, width=0, height=0, step=0, data=b""),
        "too_large": lambda: _image(4, 0, width=400, height=300),
        "bad_step": lambda: _image(5, 0, step=10, data=bytes(64 * 48 * 3)),
    }[bad]()
    with pytest.raises(ImageConversionError) as info:
        VlmNode._to_rgb(node, bad_msg)
    assert info.value.reason == bad
    assert seen == []
    good = _image(6, 0)
    assert VlmNode._to_rgb(node, good).shape == (48, 64, 3)
    assert seen == [good]


def test_stamps_going_backwards_are_counted(client, node_proc):
    now = _now_ns(client)
    assert _send_and_wait(client, _image(7, now))
    older = _image(8, now - 5_000_000_000)
    assert _send_and_wait(client, older)  # still described, but reported
    assert client.spin_until(
        lambda: int(_status_values(client.diag[-1][1])[1]["stamps_backwards"]) >= 1, 10)
    assert node_proc.alive()


def test_compressed_input(tiny_llava_dir, tmp_path):
    import cv2
    from sensor_msgs.msg import CompressedImage

    from gm_skip_ros.msg import SceneDescription

    domain = test_domain_id(offset=2)
    proc = start_vlm_node(tiny_llava_dir, tmp_path / "node.log", ros_env(domain),
                          "num_threads:=1", "max_new_tokens:=4", "use_compressed_image:=true",
                          "diagnostics_period_s:=0.2")
    c = RosClient(domain)
    try:
        from diagnostic_msgs.msg import DiagnosticArray

        pub = c.node.create_publisher(CompressedImage, f"{NODE}/input/image", 10)
        desc = c.collect(SceneDescription, f"{NODE}/output/scene_description")
        diag = c.collect(DiagnosticArray, "/diagnostics")
        assert c.spin_until(lambda: pub.get_subscription_count() > 0, 120), proc.output()
        c.spin_for(0.5)
        corrupt = CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0 not a jpeg")
        corrupt.header.frame_id = "corrupt"
        pub.publish(corrupt)
        assert c.spin_until(lambda: any(
            _status_values(a)[1].get("frames_rejected_corrupt_compressed", "0") == "1"
            for _, a in diag), 30), proc.output()
        ok, jpg = cv2.imencode(".jpg", np.full((48, 64, 3), 120, np.uint8))
        good = CompressedImage(format="jpeg", data=jpg.tobytes())
        good.header.frame_id = "good"
        good.header.stamp.sec = 5
        pub.publish(good)
        assert c.spin_until(lambda: any(d.header.frame_id == "good" for _, d in desc), 60)
        assert [d.header.stamp.sec for _, d in desc if d.header.frame_id == "good"] == [5]
    finally:
        c.close()
        code = proc.stop()
    assert code == 0, proc.output()[-3000:]


@pytest.mark.parametrize("param,word", [
    ("backend:=tensorflow", "backend"),
    ("max_new_tokens:=0", "max_new_tokens"),
    ("latency_budget_ms:=500", "latency_budget_ms"),
    ("device:=tpu", "device"),
    ("plan_path:=/nonexistent/plan.json", "plan_path"),
])
def test_bad_parameter_refused_at_start(tiny_llava_dir, tmp_path, param, word):
    proc = start_vlm_node(tiny_llava_dir, tmp_path / "node.log", ros_env(test_domain_id(3)),
                          param)
    proc.proc.wait(120)
    out = proc.output()
    proc.stop()
    assert proc.proc.returncode == 2, out
    assert "vlm_node: error: parameter" in out and word in out, out


def test_missing_model_dir_refused_at_start(tmp_path):
    proc = start_vlm_node(tmp_path / "no_model", tmp_path / "node.log",
                          ros_env(test_domain_id(3)))
    proc.proc.wait(120)
    out = proc.output()
    proc.stop()
    assert proc.proc.returncode == 2 and "model_dir" in out, out


def test_full_size_frames_with_reliable_input(tiny_llava_dir, tmp_path):
    """640x480 rgb8 (921 kB) frames: with input_reliability=reliable none is lost to UDP
    fragment loss (a best-effort subscription here loses most of them, see README)."""
    from sensor_msgs.msg import Image

    from gm_skip_ros.msg import SceneDescription

    domain = test_domain_id(offset=6)
    proc = start_vlm_node(tiny_llava_dir, tmp_path / "node.log", ros_env(domain),
                          "num_threads:=1", "max_new_tokens:=2", "input_reliability:=reliable")
    c = RosClient(domain)
    try:
        c.pub = c.node.create_publisher(Image, f"{NODE}/input/image", 10)
        c.desc = c.collect(SceneDescription, f"{NODE}/output/scene_description")
        assert c.spin_until(lambda: c.pub.get_subscription_count() > 0, 120), proc.output()
        c.spin_for(0.5)
        for seq in range(3):
            msg = _image(seq, _now_ns(c), width=640, height=480)
            assert _send_and_wait(c, msg), proc.output()[-3000:]
    finally:
        c.close()
        code = proc.stop()
    assert code == 0, proc.output()[-3000:]
    assert "reliable" in proc.output()
