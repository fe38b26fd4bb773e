"""gm_skip_bag_replay over real rclpy: a bag written by the data layer is played into
vlm_node with /clock, and the node's descriptions are scored against the bag's labels."""
import json

import numpy as np
import pytest

from ros_support import VENV_BIN, NodeProcess, RosClient, ros_env, start_vlm_node, test_domain_id

pytestmark = [pytest.mark.ros, pytest.mark.slow]

N_FRAMES = 6


@pytest.fixture(scope="module")
def scene_bag(tmp_path_factory):
    from gm_skip_ros.data.rosbag import write_scene_bag

    return write_scene_bag(tmp_path_factory.mktemp("bags") / "scenes", n=N_FRAMES, seed=3,
                           width=96, height=64, fps=5.0, camera_info=False)


def test_bag_camera_reads_the_recorded_cdr(scene_bag):
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from gm_skip_ros.data.rosbag import IMAGE_TOPIC, T0_NS
    from gm_skip_ros.ros.bag_replay import BagCamera

    cam = BagCamera(scene_bag)
    try:
        assert cam.topic == IMAGE_TOPIC and cam.msgtype == "sensor_msgs/msg/Image"
        frames = list(cam)
    finally:
        cam.close()
    assert len(frames) == N_FRAMES
    msg = deserialize_message(frames[0][1], Image)
    assert (msg.width, msg.height, msg.encoding) == (96, 64, "rgb8")
    assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == T0_NS


def test_bag_camera_picks_the_image_topic_the_reader_picks(tmp_path):
    """Two raw image topics, the quieter one recorded first: replay reads the topic the
    rosbag reader (and so gm-skip search) reads, the busiest, not the first connection."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from gm_skip_ros.data.rosbag import IMAGE_TYPE, _pick_image_topic, typestore
    from gm_skip_ros.ros.bag_replay import BagCamera

    store = typestore()
    bag = tmp_path / "two_cameras"
    with Writer(bag, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {t: w.add_connection(t, IMAGE_TYPE, typestore=store)
                 for t in ("/a_quiet/image", "/b_busy/image")}
        for topic, n in (("/a_quiet/image", 1), ("/b_busy/image", 3)):
            for i in range(n):
                stamp = 1_000_000_000 + i
                header = store.types["std_msgs/msg/Header"](
                    stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=i),
                    frame_id="cam")
                img = store.types[IMAGE_TYPE](header=header, height=1, width=1,
                                              encoding="rgb8", is_bigendian=0, step=3,
                                              data=np.zeros(3, np.uint8))
                w.write(conns[topic], stamp, store.serialize_cdr(img, IMAGE_TYPE))
    cam = BagCamera(bag)
    try:
        assert cam.topic == "/b_busy/image"
        assert cam.topic == _pick_image_topic(cam._reader.connections, bag)
        assert len(list(cam)) == 3
    finally:
        cam.close()


def test_score_matches_by_stamp_and_reports_coverage():
    from gm_skip_ros.ros.bag_replay import score

    truth = {1: ("car",), 2: ("bus",), 3: ("truck",)}
    report = score({1: "a car", 2: "a truck", 9: "stray"}, truth, "accuracy", 3)
    assert report["matched"] == 2 and report["unmatched_descriptions"] == 1
    assert report["score"] == 0.5 and report["coverage"] == pytest.approx(2 / 3)


def test_bad_bag_path_is_refused(tmp_path):
    from gm_skip_ros.errors import GmSkipError
    from gm_skip_ros.ros.bag_replay import BagCamera

    with pytest.raises(GmSkipError, match="not a rosbag2 bag"):
        BagCamera(tmp_path / "nothing")


def test_replay_into_node_with_sim_time_and_evaluate(tiny_llava_dir, scene_bag, tmp_path):
    from rosgraph_msgs.msg import Clock

    from gm_skip_ros.data.rosbag import T0_NS
    from gm_skip_ros.msg import SceneDescription

    domain = test_domain_id(offset=5)
    env = ros_env(domain)
    node = start_vlm_node(tiny_llava_dir, tmp_path / "node.log", env,
                          "num_threads:=1", "max_new_tokens:=4", "use_sim_time:=true",
                          "prompt:=What is the main object?")
    client = RosClient(domain)
    try:
        clock = client.collect(Clock, "/clock")
        desc = client.collect(SceneDescription, "/vlm_node/output/scene_description")
        # the node is up once it subscribes to its camera topic
        assert client.spin_until(
            lambda: client.node.count_subscribers("/vlm_node/input/image") > 0, 120), \
            node.output()
        report_path = tmp_path / "report.json"
        replay = NodeProcess(
            [str(VENV_BIN / "gm_skip_bag_replay"), str(scene_bag),
             "--publish-as", "/vlm_node/input/image", "--rate", "1.0", "--eval",
             "--out", str(report_path), "--settle", "30"],
            env, tmp_path / "replay.log")
        assert client.spin_until(lambda: not replay.alive(), 180), replay.output()
        assert replay.proc.returncode == 0, replay.output()
        client.spin_for(0.5)
    finally:
        client.close()
        code = node.stop()
    assert code == 0, node.output()
    report = json.loads(report_path.read_text())
    assert report["frames_published"] == N_FRAMES and report["labelled_frames"] == N_FRAMES
    assert report["matched"] >= 1 and report["unmatched_descriptions"] == 0
    assert 0.0 <= report["score"] <= 1.0
    # /clock ran in bag time, and descriptions carry the bag's stamps
    clock_ns = [m.clock.sec * 10**9 + m.clock.nanosec for _, m in clock]
    assert clock_ns and min(clock_ns) >= T0_NS
    assert max(clock_ns) >= T0_NS + (N_FRAMES - 1) * 200_000_000
    stamps = {d.header.stamp.sec * 10**9 + d.header.stamp.nanosec for _, d in desc}
    assert stamps and all((s - T0_NS) % 200_000_000 == 0 for s in stamps)
