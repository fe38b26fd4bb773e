"""rosbag2 writing and streaming reading of camera frames with ground truth."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from gm_skip_ros.data import rosbag as rb
from gm_skip_ros.data import scenes
from gm_skip_ros.errors import GmSkipError

W, H = 96, 64


def _storage_file(bag: Path) -> Path:
    (f,) = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    return f


@pytest.fixture(scope="module")
def mcap_bag(tmp_path_factory) -> Path:
    return rb.write_scene_bag(tmp_path_factory.mktemp("b") / "scenes", 12, seed=4,
                              storage="mcap", width=W, height=H, compressed=True)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_preserves_images_and_labels(tmp_path, storage):
    bag = rb.write_scene_bag(tmp_path / "bag", 10, seed=2, storage=storage, width=W, height=H)
    assert (bag / "metadata.yaml").is_file() and _storage_file(bag).suffix == (
        ".mcap" if storage == "mcap" else ".db3")
    expected = list(scenes.generate_scenes(10, seed=2, width=W, height=H))
    got = rb.read_bag_samples(bag, task="caption")
    samples = list(got)
    assert len(samples) == 10
    for i, (s, (img, truth)) in enumerate(zip(samples, expected)):
        assert s.image.dtype == np.uint8 and s.image.tobytes() == img.tobytes()
        assert s.answers == truth.captions
        assert s.meta["class"] == truth.main_class and s.meta["scene_index"] == i
        assert s.meta["light_state"] == truth.light_state
        assert tuple(s.meta["bbox"]) == truth.bbox
        assert s.stamp_ns == rb.T0_NS + i * 100_000_000  # 10 fps
        assert s.id == f"{rb.IMAGE_TOPIC}@{s.stamp_ns}"
    st = got.stats
    assert (st.frames, st.samples, st.labels, st.unlabelled, st.skipped_total) == (10, 10, 10, 0, 0)
    # the bare storage file reads the same
    again = list(rb.read_bag_samples(_storage_file(bag), task="classify"))
    assert [s.answers[0] for s in again] == [scenes.DISPLAY_NAMES[t.main_class]
                                             for _, t in expected]


def test_second_reader_mcap_ros2_reads_the_bag(mcap_bag):
    from mcap_ros2.reader import read_ros2_messages

    expected = list(scenes.generate_scenes(12, seed=4, width=W, height=H))
    mcap = _storage_file(mcap_bag)
    images = [m.ros_msg for m in read_ros2_messages(str(mcap), topics=[rb.IMAGE_TOPIC])]
    labels = [m.ros_msg for m in read_ros2_messages(str(mcap), topics=[rb.LABEL_TOPIC])]
    infos = [m.ros_msg for m in read_ros2_messages(str(mcap), topics=[rb.CAMERA_INFO_TOPIC])]
    assert len(images) == len(labels) == len(infos) == 12
    for img, lab, info, (rgb, truth) in zip(images, labels, infos, expected):
        assert (img.encoding, img.width, img.height, img.step) == ("rgb8", W, H, W * 3)
        assert bytes(img.data) == rgb.tobytes()
        assert (lab.header.stamp.sec, lab.header.stamp.nanosec) == (
            img.header.stamp.sec, img.header.stamp.nanosec)
        assert lab.main_class == truth.main_class and list(lab.captions) == list(truth.captions)
        assert lab.light_state == (truth.light_state or "")
        assert info.width == W and info.k[0] > 0 and info.header.frame_id == rb.FRAME_ID


@pytest.mark.ros
def test_rclpy_deserializes_the_written_image_and_label(mcap_bag):
    serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    gm_msgs = pytest.importorskip("gm_skip_ros.msg", reason="generated messages: make msgs")
    from rosbags.rosbag2 import Reader

    rgb, truth = next(scenes.generate_scenes(1, seed=4, width=W, height=H))
    with Reader(mcap_bag) as r:
        first = {}
        for conn, _, raw in r.messages():
            first.setdefault(conn.topic, (conn, raw))
    img = serialization.deserialize_message(bytes(first[rb.IMAGE_TOPIC][1]), sensor_msgs.Image)
    assert rb.image_msg_to_rgb(img).tobytes() == rgb.tobytes()
    conn, raw = first[rb.LABEL_TOPIC]
    lab = serialization.deserialize_message(bytes(raw), gm_msgs.SceneLabel)
    assert lab.main_class == truth.main_class and list(lab.captions) == list(truth.captions)
    assert lab.header.stamp == img.header.stamp
    # the type hash recorded in the bag is the one rosidl computed for the generated message
    import json
    import sys

    desc = Path(sys.prefix) / "share" / "gm_skip_ros" / "msg" / "SceneLabel.json"
    if desc.is_file():
        hashes = {h["type_name"]: h["hash_string"]
                  for h in json.loads(desc.read_text())["type_hashes"]}
        assert conn.digest == hashes[rb.LABEL_TYPE]


def test_compressed_topic_is_read_with_imdecode(mcap_bag):
    expected = list(scenes.generate_scenes(12, seed=4, width=W, height=H))
    got = rb.read_bag_samples(mcap_bag, image_topic=rb.COMPRESSED_TOPIC)
    samples = list(got)
    assert len(samples) == 12 and got.stats.image_topic == rb.COMPRESSED_TOPIC
    for s, (rgb, _) in zip(samples, expected):
        assert s.image.shape == rgb.shape
        # jpeg at quality 90: close to the original (a BGR/RGB swap would be far off)
        assert np.abs(s.image.astype(int) - rgb.astype(int)).mean() < 6


def test_auto_detect_prefers_raw_images(mcap_bag):
    got = rb.read_bag_samples(mcap_bag, limit=3)
    assert len(list(got)) == 3
    assert got.stats.image_topic == rb.IMAGE_TOPIC and got.stats.stopped_at_limit


# ---------------------------------------------------------------- hand-made bags


def _write_bag(path: Path, frames, labels=(), extra_string_topic=False, storage="mcap"):
    """frames: list of (stamp, Image or CompressedImage message); labels: list of stamps."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    store = rb.typestore()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as w:
        conns = {}
        if extra_string_topic:
            c = w.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
            w.write(c, 1, store.serialize_cdr(store.types["std_msgs/msg/String"](data="hi"),
                                              "std_msgs/msg/String"))
        c_lab = w.add_connection(rb.LABEL_TOPIC, rb.LABEL_TYPE, typestore=store) \
            if labels else None
        events = [(s, "img", m) for s, m in frames] + [(s, "lab", None) for s in labels]
        for stamp, kind, msg in sorted(events, key=lambda e: (e[0], e[1])):
            if kind == "img":
                t = msg.__msgtype__
                if t not in conns:
                    conns[t] = w.add_connection("/cam/image", t, typestore=store)
                w.write(conns[t], stamp, store.serialize_cdr(msg, t))
            else:
                _, truth = scenes.render_scene(np.random.default_rng(stamp), 32, 32)
                lab = rb._label_msg(store, rb._header(store, stamp), truth, 0, 0)
                w.write(c_lab, stamp, store.serialize_cdr(lab, rb.LABEL_TYPE))
    return path


def _image(stamp, rgb, encoding="rgb8", pad=0):
    store = rb.typestore()
    conv = {"rgb8": None, "bgr8": cv2.COLOR_RGB2BGR, "rgba8": cv2.COLOR_RGB2RGBA,
            "bgra8": cv2.COLOR_RGB2BGRA, "mono8": cv2.COLOR_RGB2GRAY}
    arr = rgb if conv.get(encoding) is None else cv2.cvtColor(rgb, conv[encoding])
    arr = arr.reshape(rgb.shape[0], -1)
    if pad:
        arr = np.hstack([arr, np.full((arr.shape[0], pad), 7, np.uint8)])
    h, step = arr.shape
    return store.types[rb.IMAGE_TYPE](header=rb._header(store, stamp), height=h,
                                      width=rgb.shape[1], encoding=encoding, is_bigendian=0,
                                      step=step, data=arr.reshape(-1).copy())


def _compressed(stamp, data: bytes):
    store = rb.typestore()
    return store.types[rb.COMPRESSED_TYPE](header=rb._header(store, stamp), format="jpeg",
                                           data=np.frombuffer(data, np.uint8).copy())


def test_bag_without_image_topic_names_the_topics(tmp_path):
    bag = _write_bag(tmp_path / "b", frames=[], labels=[5], extra_string_topic=True)
    with pytest.raises(GmSkipError, match="no sensor_msgs/msg/Image") as exc:
        list(rb.read_bag_samples(bag))
    assert "/chatter" in str(exc.value) and rb.LABEL_TOPIC in str(exc.value)
    assert "\n" not in str(exc.value)
    with pytest.raises(GmSkipError, match="/nope is not in bag"):
        list(rb.read_bag_samples(bag, image_topic="/nope"))


def test_bag_without_label_topic(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    bag = _write_bag(tmp_path / "b", frames=[(10, _image(10, rgb)), (20, _image(20, rgb))])
    with pytest.raises(GmSkipError, match="no label topic /gm_skip/ground_truth"):
        list(rb.read_bag_samples(bag))
    got = rb.read_bag_samples(bag, keep_unlabelled=True)
    samples = list(got)
    assert len(samples) == 2 and samples[0].answers == () and not samples[0].meta["labelled"]
    assert got.stats.unlabelled == 2


def test_frames_without_labels_are_counted_and_reported(tmp_path, caplog):
    rgb = np.full((8, 8, 3), 100, np.uint8)
    stamps = [10, 20, 30, 40, 50]
    bag = _write_bag(tmp_path / "b", frames=[(s, _image(s, rgb)) for s in stamps],
                     labels=[10, 30, 50, 99])
    got = rb.read_bag_samples(bag)
    with caplog.at_level(logging.WARNING, logger="gm_skip_ros.data.rosbag"):
        samples = list(got)
    assert [s.stamp_ns for s in samples] == [10, 30, 50]
    st = got.stats
    assert (st.frames, st.samples, st.unlabelled, st.labels, st.unmatched_labels) == (5, 3, 2, 4, 1)
    assert "2 without a label" in caplog.text and "1 labels without a frame" in caplog.text


def test_labels_match_by_stamp_even_when_they_arrive_first(tmp_path):
    rgb = np.full((8, 8, 3), 50, np.uint8)
    # "img" sorts before "lab" at the same stamp; give labels earlier bag times instead
    bag = tmp_path / "b"
    from rosbags.rosbag2 import StoragePlugin, Writer

    store = rb.typestore()
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        ci = w.add_connection("/cam/image", rb.IMAGE_TYPE, typestore=store)
        cl = w.add_connection(rb.LABEL_TOPIC, rb.LABEL_TYPE, typestore=store)
        for k, stamp in enumerate((100, 200, 300)):
            _, truth = scenes.render_scene(np.random.default_rng(k), 32, 32,
                                           main_class=scenes.CLASSES[k])
            lab = rb._label_msg(store, rb._header(store, stamp), truth, 0, k)
            w.write(cl, 1000 + k * 10, store.serialize_cdr(lab, rb.LABEL_TYPE))  # label first
            w.write(ci, 1005 + k * 10, store.serialize_cdr(_image(stamp, rgb), rb.IMAGE_TYPE))
    samples = list(rb.read_bag_samples(bag))
    assert [s.meta["class"] for s in samples] == list(scenes.CLASSES[:3])
    assert [s.stamp_ns for s in samples] == [100, 200, 300]


def test_encodings_are_converted_and_unknown_ones_counted(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    frames = [
        (10, _image(10, rgb, "rgb8", pad=2)),
        (20, _image(20, rgb, "bgr8")),
        (30, _image(30, rgb, "rgba8", pad=4)),
        (40, _image(40, rgb, "bgra8")),
        (50, _image(50, rgb, "mono8", pad=6)),
        (60, _image(60, rgb, "rgb8")),
    ]
    weird = _image(60, rgb, "rgb8")
    weird.encoding = "yuv420"
    frames[-1] = (60, weird)
    bag = _write_bag(tmp_path / "b", frames=frames, labels=[10, 20, 30, 40, 50, 60])
    got = rb.read_bag_samples(bag)
    by_stamp = {s.stamp_ns: s.image for s in got}
    assert sorted(by_stamp) == [10, 20, 30, 40, 50]
    for stamp in (10, 20, 30, 40):
        assert np.array_equal(by_stamp[stamp], rgb), stamp
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    assert np.array_equal(by_stamp[50], np.repeat(grey[:, :, None], 3, axis=2))
    assert got.stats.skipped == {"unknown_encoding 'yuv420'": 1}


def test_short_image_data_and_corrupt_jpeg_are_skipped(tmp_path):
    rgb = np.full((8, 8, 3), 9, np.uint8)
    short = _image(10, rgb)
    short.data = short.data[:-5]
    ok, jpg = cv2.imencode(".jpg", rgb)
    frames = [(20, _compressed(20, jpg.tobytes())), (30, _compressed(30, b"\xff\xd8garbage"))]
    bag = _write_bag(tmp_path / "c", frames=frames, labels=[20, 30])
    got = rb.read_bag_samples(bag)
    assert [s.stamp_ns for s in got] == [20]
    assert got.stats.skipped == {"corrupt_compressed": 1}
    bag2 = _write_bag(tmp_path / "r", frames=[(10, short)], labels=[10])
    got2 = rb.read_bag_samples(bag2)
    assert list(got2) == [] and got2.stats.skipped == {"short_data": 1}


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.002])
def test_truncated_mcap_raises_one_line_error(mcap_bag, tmp_path, keep):
    data = _storage_file(mcap_bag).read_bytes()
    bad = tmp_path / "cut.mcap"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(GmSkipError, match="truncated or corrupt") as exc:
        list(rb.read_bag_samples(bad))
    assert "\n" not in str(exc.value)


def test_truncated_sqlite_raises(tmp_path):
    bag = rb.write_scene_bag(tmp_path / "s", 4, seed=0, storage="sqlite3", width=W, height=H)
    f = _storage_file(bag)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(GmSkipError, match="truncated or corrupt"):
        list(rb.read_bag_samples(bag))


def test_not_a_bag():
    with pytest.raises(GmSkipError, match="does not exist"):
        rb.read_bag_samples("/nonexistent/bag")
    with pytest.raises(GmSkipError, match="not a rosbag2 bag"):
        rb.read_bag_samples(Path(__file__))


def test_split_is_deterministic_disjoint_and_near_the_fraction():
    ids = [f"{rb.IMAGE_TOPIC}@{rb.T0_NS + i * 100_000_000}" for i in range(2000)]
    a = [rb.split_of(i, 0.3) for i in ids]
    assert a == [rb.split_of(i, 0.3) for i in reversed(ids)][::-1]  # order-independent
    frac = a.count("heldout") / len(a)
    assert 0.26 < frac < 0.34
    assert all(rb.split_of(i, 0.0) == "calib" for i in ids[:50])
    assert all(rb.split_of(i, 1.0) == "heldout" for i in ids[:50])


def test_bag_splits_partition_the_samples(mcap_bag):
    all_ids = [s.id for s in rb.read_bag_samples(mcap_bag)]
    calib = rb.read_bag_samples(mcap_bag, split="calib", holdout_fraction=0.4)
    held = rb.read_bag_samples(mcap_bag, split="heldout", holdout_fraction=0.4)
    c, h = [s.id for s in calib], [s.id for s in held]
    assert set(c).isdisjoint(h) and sorted(c + h) == sorted(all_ids)
    assert c and h
    assert calib.stats.other_split == len(h) and calib.stats.unmatched_labels == 0
    assert [s.id for s in rb.read_bag_samples(mcap_bag, split="calib",
                                              holdout_fraction=0.4)] == c
    with pytest.raises(GmSkipError, match="unknown split"):
        rb.read_bag_samples(mcap_bag, split="train")


def test_writer_is_atomic_and_refuses_to_overwrite(tmp_path):
    bag = rb.write_scene_bag(tmp_path / "bag", 2, seed=0, width=W, height=H)
    before = sorted(p.name for p in bag.iterdir())
    with pytest.raises(GmSkipError, match="already exists"):
        rb.write_scene_bag(bag, 2, seed=1, width=W, height=H)
    assert sorted(p.name for p in bag.iterdir()) == before
    rb.write_scene_bag(bag, 3, seed=1, width=W, height=H, storage="sqlite3", overwrite=True)
    assert len(list(rb.read_bag_samples(bag))) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]  # no temp dirs left
    with pytest.raises(GmSkipError, match="unknown bag storage"):
        rb.write_scene_bag(tmp_path / "x", 2, seed=0, storage="rosbag1")


def test_make_bag_command(tmp_path, capsys):
    from gm_skip_ros.cli import main

    out = tmp_path / "cli"
    assert main(["make-bag", "--out", str(out), "--frames", "3", "--seed", "5",
                 "--size", "64x48", "--storage", "sqlite3", "--compressed"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out} (sqlite3): 3 frames 64x48")
    got = rb.read_bag_samples(out, image_topic=rb.COMPRESSED_TOPIC)
    assert len(list(got)) == 3
    assert main(["make-bag", "--out", str(out), "--frames", "3"]) == 2
    assert "already exists" in capsys.readouterr().err
