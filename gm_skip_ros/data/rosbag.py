"""rosbag2 bags of camera frames with ground truth, without a ROS installation.

Written and read with the pure-Python ``rosbags`` library; the files are ordinary rosbag2
bags (mcap or sqlite3 storage) that ``ros2 bag play`` replays.

Topics written by :func:`write_scene_bag` (Autoware's camera naming):

- ``/sensing/camera/camera0/image_rect_color``: ``sensor_msgs/msg/Image``, rgb8
- ``/sensing/camera/camera0/image_rect_color/compressed``: ``sensor_msgs/msg/CompressedImage``,
  jpeg (optional)
- ``/sensing/camera/camera0/camera_info``: ``sensor_msgs/msg/CameraInfo`` (optional)
- ``/gm_skip/ground_truth``: ``gm_skip_ros/msg/SceneLabel`` (msg/SceneLabel.msg), header
  identical to the image's header.

:func:`read_bag_samples` streams a bag into :class:`~gm_skip_ros.data.sample.Sample` objects,
matching labels to frames by header stamp, and counts every frame it could not use.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
import tempfile
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from gm_skip_ros.data.sample import Sample
from gm_skip_ros.errors import GmSkipError

log = logging.getLogger(__name__)

IMAGE_TOPIC = "/sensing/camera/camera0/image_rect_color"
COMPRESSED_TOPIC = IMAGE_TOPIC + "/compressed"
CAMERA_INFO_TOPIC = "/sensing/camera/camera0/camera_info"
LABEL_TOPIC = "/gm_skip/ground_truth"
FRAME_ID = "camera0/camera_optical_link"

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
LABEL_TYPE = "gm_skip_ros/msg/SceneLabel"

STORAGES = ("mcap", "sqlite3")
SPLITS = ("calib", "heldout")
#: First stamp of a written bag (2023-11-14T22:13:20Z), so stamps look like wall time.
T0_NS = 1_700_000_000 * 1_000_000_000
#: A frame or label left unmatched this long (bag time) is given up on.
MATCH_WINDOW_NS = 5 * 1_000_000_000



# --------------------------------------------------------------------------- types


def scene_label_msg_path() -> Path:
    """Path of msg/SceneLabel.msg (the source checkout, or an installed share/ directory)."""
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "msg" / "SceneLabel.msg"]
    try:  # a colcon / ROS install
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("gm_skip_ros")) / "msg" /
                          "SceneLabel.msg")
    except Exception:  # noqa: BLE001 - ament index absent or package not registered there
        pass
    import sys

    candidates.append(Path(sys.prefix) / "share" / "gm_skip_ros" / "msg" / "SceneLabel.msg")
    for c in candidates:
        if c.is_file():
            return c
    raise GmSkipError(
        "cannot find SceneLabel.msg (looked in " + ", ".join(str(c) for c in candidates)
        + "); run from the source checkout or install the package with its msg/ files")


@lru_cache(maxsize=1)
def typestore():
    """A rosbags typestore with the ROS 2 standard messages and gm_skip_ros/msg/SceneLabel."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    text = scene_label_msg_path().read_text(encoding="utf-8")
    store.register(get_types_from_msg(text, LABEL_TYPE))
    return store


# --------------------------------------------------------------------------- split


def split_of(sample_id: str, holdout_fraction: float = 0.3) -> str:
    """"heldout" or "calib" for a sample id, from a hash of the id alone.

    Stable across runs, machines and bag order; about ``holdout_fraction`` of ids are
    held out.
    """
    h = hashlib.sha256(sample_id.encode("utf-8")).digest()
    u = int.from_bytes(h[:8], "big") / 2.0 ** 64
    return "heldout" if u < holdout_fraction else "calib"


def _check_split(split: str | None, holdout_fraction: float) -> None:
    if split is not None and split not in SPLITS:
        raise GmSkipError(f"unknown split {split!r}; use 'calib', 'heldout' or None for all")
    if not 0.0 <= holdout_fraction <= 1.0:
        raise GmSkipError(f"holdout_fraction must be in [0, 1] (got {holdout_fraction})")


# --------------------------------------------------------------------------- writer


def _camera_info(store, header, width: int, height: int, hfov_deg: float = 60.0):
    """Pinhole, no distortion, horizontal field of view ``hfov_deg``."""
    f = (width / 2.0) / np.tan(np.radians(hfov_deg) / 2.0)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    T = store.types
    return T[CAMERA_INFO_TYPE](
        header=header,
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=np.zeros(5, np.float64),
        k=np.array([f, 0, cx, 0, f, cy, 0, 0, 1], np.float64),
        r=np.eye(3, dtype=np.float64).ravel(),
        p=np.array([f, 0, cx, 0, 0, f, cy, 0, 0, 0, 1, 0], np.float64),
        binning_x=0,
        binning_y=0,
        roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                   do_rectify=False),
    )


def _header(store, stamp_ns: int, frame_id: str = FRAME_ID):
    T = store.types
    stamp = T["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000,
                                             nanosec=stamp_ns % 1_000_000_000)
    return T["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def _label_msg(store, header, truth, seed: int, index: int):
    return store.types[LABEL_TYPE](
        header=header,
        main_class=truth.main_class,
        display_name=truth.display_name,
        light_state=truth.light_state or "",
        position=truth.position,
        colour=truth.colour,
        time_of_day=truth.time_of_day,
        weather=truth.weather,
        blur=bool(truth.blur),
        bbox=np.asarray(truth.bbox, np.int32),
        distractors=list(truth.distractors),
        captions=list(truth.captions),
        seed=int(seed),
        scene_index=int(index),
    )


def write_scene_bag(path: str | os.PathLike, n: int, seed: int, storage: str = "mcap",
                    width: int = 640, height: int = 480, fps: float = 10.0,
                    compressed: bool = False, camera_info: bool = True,
                    overwrite: bool = False, progress=None) -> Path:
    """Write a rosbag2 bag of ``n`` rendered driving scenes and their ground truth.

    path: the bag directory to create (written in a temporary sibling, renamed into place).
    storage: "mcap" or "sqlite3". fps: frame rate of the header stamps (from T0_NS).
    compressed: also write jpeg CompressedImage messages. camera_info: write CameraInfo.
    overwrite: replace an existing bag at ``path`` (else GmSkipError).
    progress: optional callable(k) called after each frame (e.g. a tqdm ``update``).
    Scene i is ``generate_scenes``' scene i for ``seed``. Returns the bag path.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    from gm_skip_ros.data.scenes import generate_scenes

    if storage not in STORAGES:
        raise GmSkipError(f"unknown bag storage {storage!r}; use one of {', '.join(STORAGES)}")
    if n < 1:
        raise GmSkipError(f"a bag needs at least one frame (got {n})")
    if fps <= 0:
        raise GmSkipError(f"fps must be > 0 (got {fps})")
    path = Path(path)
    if path.exists() and not overwrite:
        raise GmSkipError(f"{path} already exists; remove it, choose another output path, or "
                          "overwrite it (make-bag --force)")
    store = typestore()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        bag = staging / path.name
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        with Writer(bag, version=Writer.VERSION_LATEST, storage_plugin=plugin) as w:
            c_img = w.add_connection(IMAGE_TOPIC, IMAGE_TYPE, typestore=store)
            c_cmp = (w.add_connection(COMPRESSED_TOPIC, COMPRESSED_TYPE, typestore=store)
                     if compressed else None)
            c_info = (w.add_connection(CAMERA_INFO_TOPIC, CAMERA_INFO_TYPE, typestore=store)
                      if camera_info else None)
            c_lab = w.add_connection(LABEL_TOPIC, LABEL_TYPE, typestore=store)
            w.set_custom_data("gm_skip_ros.scenes",
                              f"seed={seed} frames={n} size={width}x{height}")
            period_ns = int(round(1e9 / fps))
            for i, (rgb, truth) in enumerate(generate_scenes(n, seed, width, height)):
                stamp = T0_NS + i * period_ns
                header = _header(store, stamp)
                img = store.types[IMAGE_TYPE](header=header, height=height, width=width,
                                              encoding="rgb8", is_bigendian=0, step=width * 3,
                                              data=rgb.reshape(-1))
                w.write(c_img, stamp, store.serialize_cdr(img, IMAGE_TYPE))
                if c_cmp is not None:
                    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                           [cv2.IMWRITE_JPEG_QUALITY, 90])
                    assert ok, "OpenCV failed to encode a jpeg"
                    cmp = store.types[COMPRESSED_TYPE](
                        header=header, format="rgb8; jpeg compressed bgr8", data=jpg.reshape(-1))
                    w.write(c_cmp, stamp, store.serialize_cdr(cmp, COMPRESSED_TYPE))
                if c_info is not None:
                    info = _camera_info(store, header, width, height)
                    w.write(c_info, stamp, store.serialize_cdr(info, CAMERA_INFO_TYPE))
                lab = _label_msg(store, header, truth, seed, i)
                w.write(c_lab, stamp, store.serialize_cdr(lab, LABEL_TYPE))
                if progress is not None:
                    progress(1)
        if path.exists():  # overwrite: move the old bag into staging, removed below
            os.replace(path, staging / ".old")
        os.replace(bag, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


# --------------------------------------------------------------------------- images


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """H x W x 3 uint8 RGB from a sensor_msgs Image or CompressedImage message.

    Works on any object with the message's fields (rosbags or rclpy messages). The
    conversion itself is gm_skip_ros.data.image_conversion (no rclpy there), shared with the
    node: rgb8/bgr8/rgba8/bgra8/mono8, 16-bit and YUV 4:2:2 encodings, ``step`` padding;
    CompressedImage via cv2.imdecode. Raises its ImageConversionError (``.reason``).
    """
    from gm_skip_ros.data.image_conversion import (ImageConversionError, compressed_to_rgb,
                                                  raw_to_rgb)

    if hasattr(msg, "encoding"):
        return raw_to_rgb(msg.height, msg.width, msg.encoding, bool(msg.is_bigendian),
                          msg.step, msg.data)
    if hasattr(msg, "format"):
        return compressed_to_rgb(msg.format, msg.data)
    raise ImageConversionError("not_an_image", f"not an image message: {type(msg).__name__}")


def _skip_reason(msg: Any, exc: ValueError) -> str:
    """Short key for BagStats.skipped, e.g. "unknown_encoding 'yuv420'" or "short_data"."""
    reason = getattr(exc, "reason", type(exc).__name__)
    if reason == "unknown_encoding":
        return f"{reason} {getattr(msg, 'encoding', '')!r}"
    return reason


# --------------------------------------------------------------------------- reader


def is_bag_path(path: str | os.PathLike) -> bool:
    """True for a rosbag2 directory (metadata.yaml) or a bare .mcap / .db3 storage file."""
    p = Path(path)
    if p.is_dir():
        return (p / "metadata.yaml").is_file()
    return p.suffix in (".mcap", ".db3")


def stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


@dataclass
class BagStats:
    """What a pass over a bag found. Filled while iterating; complete when it ends.

    frames:          image messages read on the image topic.
    samples:         samples yielded.
    other_split:     frames left out because they belong to the other split.
    unlabelled:      frames with no label of the same stamp (not yielded unless
                     keep_unlabelled).
    skipped:         frames that could not be used, by reason (encoding, corrupt data...).
    labels:          label messages read; unmatched_labels: labels with no frame.
    stopped_at_limit: iteration ended at ``limit`` (the counts cover only what was read).
    """

    path: str
    image_topic: str = ""
    label_topic: str = ""
    frames: int = 0
    samples: int = 0
    other_split: int = 0
    unlabelled: int = 0
    skipped: Counter = field(default_factory=Counter)
    labels: int = 0
    unmatched_labels: int = 0
    stopped_at_limit: bool = False

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        s = (f"{self.path}: {self.samples} samples from {self.frames} frames on "
             f"{self.image_topic}")
        if self.other_split:
            s += f", {self.other_split} in the other split"
        if self.unlabelled:
            s += f", {self.unlabelled} without a label on {self.label_topic}"
        if self.skipped:
            s += ", skipped " + ", ".join(f"{n} ({r})" for r, n in sorted(self.skipped.items()))
        if self.unmatched_labels:
            s += f", {self.unmatched_labels} labels without a frame"
        if self.stopped_at_limit:
            s += " (stopped at limit)"
        return s

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "image_topic": self.image_topic, "label_topic": self.label_topic,
            "frames": self.frames, "samples": self.samples, "other_split": self.other_split,
            "unlabelled": self.unlabelled, "skipped": dict(self.skipped), "labels": self.labels,
            "unmatched_labels": self.unmatched_labels, "stopped_at_limit": self.stopped_at_limit,
        }


_READ_ERRORS: tuple[type[BaseException], ...] = (
    struct.error, EOFError, OSError, ValueError, IndexError, KeyError, AssertionError)


def _read_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag2 import ReaderError

    return (AnyReaderError, ReaderError, sqlite3.Error, *_READ_ERRORS)


def _corrupt(path: Path, err: BaseException) -> GmSkipError:
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return GmSkipError(
        f"cannot read bag {path}: {detail} (the file is truncated or corrupt); re-record or "
        "re-create it (`gm-skip make-bag`), or repair an interrupted mcap with `mcap recover`")


def _topics_text(connections) -> str:
    seen = sorted({(c.topic, c.msgtype) for c in connections})
    return ", ".join(f"{t} [{m}]" for t, m in seen) or "none"


def _pick_image_topic(connections, path: Path) -> str:
    counts: Counter = Counter()
    kinds: dict[str, str] = {}
    for c in connections:
        if c.msgtype in (IMAGE_TYPE, COMPRESSED_TYPE):
            counts[c.topic] += c.msgcount
            kinds[c.topic] = c.msgtype
    if not kinds:
        raise GmSkipError(
            f"bag {path} has no sensor_msgs/msg/Image or CompressedImage topic (topics: "
            f"{_topics_text(connections)}); record the camera topic, or pass image_topic")
    # raw images first, Autoware's default camera topic first, then the busiest, then by name
    best = min(kinds, key=lambda t: (kinds[t] != IMAGE_TYPE, t != IMAGE_TOPIC, -counts[t], t))
    if len(kinds) > 1:
        log.info("bag %s has %d image topics; reading %s (pass image_topic to choose)",
                 path, len(kinds), best)
    return best


def _truth_from_label(lab: Any):
    from gm_skip_ros.data.scenes import SceneTruth

    return SceneTruth(
        main_class=str(lab.main_class),
        light_state=str(getattr(lab, "light_state", "")) or None,
        position=str(getattr(lab, "position", "")),
        colour=str(getattr(lab, "colour", "")),
        time_of_day=str(getattr(lab, "time_of_day", "")),
        weather=str(getattr(lab, "weather", "")),
        blur=bool(getattr(lab, "blur", False)),
        bbox=tuple(int(v) for v in getattr(lab, "bbox", (0, 0, 0, 0))),
        distractors=tuple(str(v) for v in getattr(lab, "distractors", ())),
        captions=tuple(str(v) for v in getattr(lab, "captions", ())),
    )


class BagSamples:
    """Samples streamed from a bag; iterate it (again) to read; ``.stats`` after a pass.

    Each iteration re-opens the bag and reads it message by message: memory holds only
    frames waiting for their label (at most ``max_pending``).
    """

    def __init__(self, path: str | os.PathLike, task: str = "classify",
                 image_topic: str | None = None, label_topic: str = LABEL_TOPIC,
                 split: str | None = None, holdout_fraction: float = 0.3,
                 limit: int | None = None, keep_unlabelled: bool = False,
                 max_pending: int = 64) -> None:
        from gm_skip_ros.data.scenes import PROMPTS

        if task not in PROMPTS:
            raise GmSkipError(f"unknown task {task!r}; use one of {', '.join(PROMPTS)}")
        _check_split(split, holdout_fraction)
        if limit is not None and limit < 0:
            raise GmSkipError(f"limit must be >= 0 (got {limit})")
        self.path = Path(path)
        if not self.path.exists():
            raise GmSkipError(f"bag {self.path} does not exist; check the path")
        if not is_bag_path(self.path):
            raise GmSkipError(
                f"{self.path} is not a rosbag2 bag (a directory with metadata.yaml, or a "
                ".mcap / .db3 file)")
        self.task = task
        self.image_topic = image_topic
        self.label_topic = label_topic
        self.split = split
        self.holdout_fraction = holdout_fraction
        self.limit = limit
        self.keep_unlabelled = keep_unlabelled
        self.max_pending = max(1, int(max_pending))
        self.stats = BagStats(str(self.path))

    def __iter__(self) -> Iterator[Sample]:
        self.stats = stats = BagStats(str(self.path))
        try:
            yield from self._read(stats)
        finally:
            if stats.unlabelled or stats.skipped or stats.unmatched_labels:
                log.warning("%s", stats.summary())
            else:
                log.info("%s", stats.summary())

    def _sample(self, msg: Any, stamp: int, lab: Any | None, stats: BagStats) -> Sample | None:
        from gm_skip_ros.data.scenes import CLASSES, PROMPTS, sample_from_truth

        from gm_skip_ros.data.image_conversion import ImageConversionError

        try:
            rgb = image_msg_to_rgb(msg)
        except ImageConversionError as exc:
            stats.skipped[_skip_reason(msg, exc)] += 1
            log.debug("skipped frame %d on %s: %s", stamp, stats.image_topic, exc)
            return None
        sid = f"{stats.image_topic}@{stamp}"
        if lab is None:
            return Sample(image=rgb, prompt=PROMPTS[self.task], answers=(), stamp_ns=stamp,
                          id=sid, meta={"labelled": False, "topic": stats.image_topic})
        truth = _truth_from_label(lab)
        if truth.main_class not in CLASSES:
            stats.skipped[f"unknown class {truth.main_class!r}"] += 1
            return None
        if self.task == "caption" and not truth.captions:
            stats.skipped["label has no captions"] += 1
            return None
        s = sample_from_truth(rgb, truth, self.task, stamp_ns=stamp, id=sid)
        s.meta.update(labelled=True, topic=stats.image_topic,
                      seed=int(getattr(lab, "seed", 0)),
                      scene_index=int(getattr(lab, "scene_index", 0)))
        return s

    def _read(self, stats: BagStats) -> Iterator[Sample]:
        from rosbags.highlevel import AnyReader

        errors = _read_errors()
        path = self.path
        try:
            reader = AnyReader([path], default_typestore=typestore())
            reader.open()
        except errors as exc:
            raise _corrupt(path, exc) from None
        try:
            conns = reader.connections
            topics = {c.topic: c.msgtype for c in conns}
            img_topic = self.image_topic or _pick_image_topic(conns, path)
            if topics.get(img_topic) not in (IMAGE_TYPE, COMPRESSED_TYPE):
                what = "is not in" if img_topic not in topics else \
                    f"has type {topics[img_topic]} (not an image) in"
                raise GmSkipError(f"image topic {img_topic} {what} bag {path} (topics: "
                                  f"{_topics_text(conns)}); pass one of its image topics")
            lab_topic = self.label_topic
            if lab_topic not in topics:
                if not self.keep_unlabelled:
                    raise GmSkipError(
                        f"bag {path} has no label topic {lab_topic} (topics: "
                        f"{_topics_text(conns)}); pass the topic carrying {LABEL_TYPE} "
                        "ground truth, or keep_unlabelled=True")
                lab_topic = None
            stats.image_topic, stats.label_topic = img_topic, lab_topic or ""
            want = [c for c in conns if c.topic in (img_topic, lab_topic)]
            yield from self._match(reader, want, img_topic, lab_topic, stats, errors)
        finally:
            try:
                reader.close()
            except errors:
                pass

    def _match(self, reader, want, img_topic, lab_topic, stats, errors) -> Iterator[Sample]:
        pending_img: OrderedDict[int, tuple[int, Any]] = OrderedDict()
        pending_lab: OrderedDict[int, tuple[int, Any]] = OrderedDict()
        split, hf, limit = self.split, self.holdout_fraction, self.limit

        def in_split(stamp: int) -> bool:
            return split is None or split_of(f"{img_topic}@{stamp}", hf) == split

        def give_up(now: int | None) -> Iterator[Sample]:
            """Frames and labels that waited too long (all of them when now is None)."""
            while pending_img and (now is None or len(pending_img) > self.max_pending
                                   or now - next(iter(pending_img.values()))[0]
                                   > MATCH_WINDOW_NS):
                stamp, (_, msg) = pending_img.popitem(last=False)
                stats.unlabelled += 1
                if self.keep_unlabelled:
                    s = self._sample(msg, stamp, None, stats)
                    if s is not None:
                        yield s
            while pending_lab and (now is None or len(pending_lab) > self.max_pending
                                   or now - next(iter(pending_lab.values()))[0]
                                   > MATCH_WINDOW_NS):
                pending_lab.popitem(last=False)
                stats.unmatched_labels += 1

        if limit == 0:
            stats.stopped_at_limit = True
            return
        messages = reader.messages(connections=want)
        while True:
            try:
                item = next(messages, None)
            except errors as exc:
                raise _corrupt(self.path, exc) from None
            if item is None:
                break
            conn, ts, raw = item
            out: list[Sample] = []
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except errors as exc:
                kind = "frame" if conn.topic == img_topic else "label"
                if kind == "frame":
                    stats.frames += 1
                    stats.skipped["undecodable image message"] += 1
                else:
                    stats.labels += 1
                log.debug("undecodable %s at %d on %s: %s", kind, ts, conn.topic, exc)
                continue
            stamp = stamp_ns(msg.header)
            if conn.topic == img_topic:
                stats.frames += 1
                if not in_split(stamp):
                    stats.other_split += 1
                    continue
                if stamp in pending_img:
                    stats.skipped["duplicate stamp"] += 1
                    continue
                lab = pending_lab.pop(stamp, None)
                if lab is not None:
                    s = self._sample(msg, stamp, lab[1], stats)
                    if s is not None:
                        out.append(s)
                elif lab_topic is None:
                    stats.unlabelled += 1
                    s = self._sample(msg, stamp, None, stats)
                    if s is not None:
                        out.append(s)
                else:
                    pending_img[stamp] = (ts, msg)
            else:
                stats.labels += 1
                if not in_split(stamp):
                    continue
                frame = pending_img.pop(stamp, None)
                if frame is not None:
                    s = self._sample(frame[1], stamp, msg, stats)
                    if s is not None:
                        out.append(s)
                else:
                    pending_lab[stamp] = (ts, msg)
            out.extend(give_up(ts))
            for s in out:
                stats.samples += 1
                yield s
                if limit is not None and stats.samples >= limit:
                    stats.stopped_at_limit = True
                    return
        for s in give_up(None):
            stats.samples += 1
            yield s
            if limit is not None and stats.samples >= limit:
                stats.stopped_at_limit = True
                return


def read_bag_samples(path: str | os.PathLike, task: str = "classify",
                     image_topic: str | None = None, label_topic: str = LABEL_TOPIC,
                     split: str | None = None, holdout_fraction: float = 0.3,
                     limit: int | None = None, keep_unlabelled: bool = False) -> BagSamples:
    """Stream :class:`Sample` objects from a rosbag2 bag (directory, .mcap or .db3).

    task:          "classify" or "caption" (prompt and answers, see scenes.sample_from_truth).
    image_topic:   Image or CompressedImage topic; None picks one (raw Image preferred).
    label_topic:   gm_skip_ros/msg/SceneLabel topic; labels match frames by header stamp.
    split:         "calib", "heldout" or None (all); by split_of(sample id), the id being
                   "<image_topic>@<stamp_ns>".
    limit:         stop after this many samples.
    keep_unlabelled: also yield frames without a label (answers=(), meta["labelled"]=False);
                   required for bags with no label topic.
    Returns an iterable; its ``.stats`` (BagStats) counts frames that were skipped
    (unsupported encoding, corrupt data), unlabelled or in the other split. A truncated or
    corrupt bag raises GmSkipError.
    """
    return BagSamples(path, task=task, image_topic=image_topic, label_topic=label_topic,
                      split=split, holdout_fraction=holdout_fraction, limit=limit,
                      keep_unlabelled=keep_unlabelled)
