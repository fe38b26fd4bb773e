"""gm_skip_bag_replay: play a recorded bag's camera topic into vlm_node, optionally scoring
its descriptions against the bag's ground truth.

For machines without ``ros2 bag play`` (e.g. the PyPI ROS 2 wheels). Reads rosbag2 bags
(directory, .mcap or .db3) with the ``rosbags`` library and publishes the camera messages'
recorded CDR bytes unchanged, at the recorded rate times ``--rate``, with ``/clock``
(rosgraph_msgs/Clock, bag time) so that nodes with ``use_sim_time:=true`` follow the bag.

Evaluation (``--eval``): subscribes to the node's ``SceneDescription`` topic, matches each
description to a frame by header stamp (the node copies the image header), looks up that
frame's ground truth (gm_skip_ros/SceneLabel on ``--label-topic``, read with
:mod:`gm_skip_ros.data.rosbag`) and scores with :mod:`gm_skip_ros.search.metrics`. Frames the
node dropped (it keeps only the newest) are reported as coverage, not scored.

    gm_skip_bag_replay BAG [--topic T] [--rate 1.0] [--eval --out report.json]
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from gm_skip_ros.errors import GmSkipError

DESCRIPTION_TOPIC = "/vlm_node/output/scene_description"


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gm_skip_bag_replay",
        description="Publish a rosbag2 bag's camera topic (and /clock) at its recorded rate; "
                    "optionally score vlm_node's descriptions against the bag's ground truth.")
    p.add_argument("bag", help="rosbag2 bag: directory with metadata.yaml, .mcap or .db3")
    p.add_argument("--topic", default=None,
                   help="camera topic in the bag (default: the bag's Image topic)")
    p.add_argument("--publish-as", default=None, metavar="TOPIC",
                   help="publish the camera messages on this topic (default: same as --topic)")
    p.add_argument("--rate", type=float, default=1.0,
                   help="playback speed factor (2.0 = twice as fast; default 1.0)")
    p.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    p.add_argument("--clock-hz", type=float, default=50.0,
                   help="/clock publish rate between messages (default 50)")
    p.add_argument("--limit", type=int, default=None, help="publish at most N camera frames")
    p.add_argument("--wait-subscribers", type=float, default=30.0, metavar="S",
                   help="wait up to S seconds for a subscriber on the camera topic before "
                        "playing (default 30; 0: do not wait)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval", action="store_true",
                   help="score the node's descriptions against the bag's ground truth")
    g.add_argument("--description-topic", default=DESCRIPTION_TOPIC,
                   help=f"SceneDescription topic (default {DESCRIPTION_TOPIC})")
    g.add_argument("--label-topic", default=None,
                   help="ground-truth topic in the bag (default /gm_skip/ground_truth)")
    g.add_argument("--task", default="classify", choices=("classify", "caption"),
                   help="which question the node was asked (default classify)")
    g.add_argument("--metric", default="accuracy",
                   help="accuracy | exact_match | cider | module:function (default accuracy)")
    g.add_argument("--settle", type=float, default=10.0, metavar="S",
                   help="after the last frame, wait up to S seconds for descriptions")
    g.add_argument("--out", default=None, metavar="REPORT.json",
                   help="write the evaluation report here (JSON)")
    return p


def _msg_class(msgtype: str):
    """rclpy message class of a rosbags type name such as ``sensor_msgs/msg/Image``."""
    pkg, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise GmSkipError(f"message type {msgtype} is not importable here ({exc}); install "
                          f"its Python package or build it with `make msgs`") from None


class BagCamera:
    """The camera messages of a bag, as (bag time ns, CDR bytes), and their type."""

    def __init__(self, path, topic: str | None = None):
        from rosbags.highlevel import AnyReader

        from gm_skip_ros.data.rosbag import _pick_image_topic, is_bag_path, typestore

        self.path = Path(path)
        if not self.path.exists() or not is_bag_path(self.path):
            raise GmSkipError(f"{self.path} is not a rosbag2 bag (a directory with "
                              "metadata.yaml, or a .mcap / .db3 file); check the path")
        self._reader = AnyReader([self.path], default_typestore=typestore())
        self._reader.open()
        conns = self._reader.connections
        if topic is None:  # the rosbag reader's choice, so replay and search read one topic
            try:
                topic = _pick_image_topic(conns, self.path)
            except GmSkipError:
                self.close()
                raise
        self.connections = [c for c in conns if c.topic == topic]
        if not self.connections:
            self.close()
            raise GmSkipError(f"topic {topic} is not in bag {self.path} (topics: "
                              f"{', '.join(sorted({c.topic for c in conns}))})")
        self.topic = topic
        self.msgtype = self.connections[0].msgtype

    def __iter__(self):
        for _conn, t_ns, raw in self._reader.messages(connections=self.connections):
            yield t_ns, bytes(raw)

    def close(self) -> None:
        self._reader.close()


def ground_truth(path, task: str, image_topic: str, label_topic: str | None):
    """{image stamp ns: reference answers} from the bag's labels."""
    from gm_skip_ros.data.rosbag import LABEL_TOPIC, read_bag_samples

    samples = read_bag_samples(path, task=task, image_topic=image_topic,
                               label_topic=label_topic or LABEL_TOPIC)
    return {s.stamp_ns: tuple(s.answers) for s in samples}


def score(descriptions: dict[int, str], truth: dict[int, tuple[str, ...]],
          metric_name: str, frames_published: int) -> dict:
    """Score descriptions (image stamp ns -> text) against ground truth; coverage counts."""
    from gm_skip_ros.search.metrics import get_metric

    metric = get_metric(metric_name)
    matched = sorted(s for s in descriptions if s in truth)
    report = {
        "metric": metric_name,
        "frames_published": frames_published,
        "descriptions": len(descriptions),
        "matched": len(matched),
        "unmatched_descriptions": len(descriptions) - len(matched),
        "coverage": len(matched) / frames_published if frames_published else 0.0,
        "score": None,
    }
    if matched:
        report["score"] = float(metric([descriptions[s] for s in matched],
                                       [truth[s] for s in matched]))
    return report


def replay(args, node, log=print) -> dict:
    """Publish the bag on ``node``; returns the evaluation report ({} without --eval)."""
    import rclpy
    from rclpy.qos import QoSProfile
    from rosgraph_msgs.msg import Clock

    if args.rate <= 0:
        raise GmSkipError(f"--rate must be > 0 (got {args.rate})")
    cam = BagCamera(args.bag, args.topic)
    try:
        msg_cls = _msg_class(cam.msgtype)
        out_topic = args.publish_as or cam.topic
        # reliable: delivered to reliable subscribers without fragment loss, and still
        # compatible with best-effort (sensor-data QoS) subscribers
        pub = node.create_publisher(msg_cls, out_topic, QoSProfile(depth=5))
        clock_pub = None if args.no_clock else node.create_publisher(Clock, "/clock", 10)
        descriptions: dict[int, str] = {}
        if args.eval:
            from gm_skip_ros.msg import SceneDescription

            def on_desc(m):
                descriptions[m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec] = m.text
            node.create_subscription(SceneDescription, args.description_topic, on_desc, 100)

        def spin(seconds: float) -> None:
            end = time.monotonic() + seconds
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    return
                rclpy.spin_once(node, timeout_sec=min(left, 0.01))

        if args.wait_subscribers > 0:
            deadline = time.monotonic() + args.wait_subscribers
            while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
                spin(0.05)
            if pub.get_subscription_count() == 0:
                log(f"no subscriber on {out_topic} after {args.wait_subscribers:.0f} s; "
                    "playing anyway")
            spin(0.3)  # let the subscriber's side of discovery settle too

        def publish_clock(bag_ns: int) -> None:
            if clock_pub is not None:
                c = Clock()
                c.clock.sec, c.clock.nanosec = divmod(int(bag_ns), 1_000_000_000)
                clock_pub.publish(c)

        sent = 0
        t_bag0 = wall0 = None
        clock_period = 1.0 / args.clock_hz if args.clock_hz > 0 else None
        for t_ns, raw in cam:
            if args.limit is not None and sent >= args.limit:
                break
            if t_bag0 is None:
                t_bag0, wall0 = t_ns, time.monotonic()
            target = wall0 + (t_ns - t_bag0) / 1e9 / args.rate
            while True:  # wait for the message's time, keeping /clock running
                now = time.monotonic()
                if now >= target:
                    break
                if clock_period:
                    publish_clock(t_bag0 + (now - wall0) * args.rate * 1e9)
                spin(min(target - now, clock_period or 0.05))
            publish_clock(t_ns)
            pub.publish(raw)  # the recorded CDR bytes, unchanged
            sent += 1
        log(f"published {sent} messages of {cam.topic} ({cam.msgtype}) on {out_topic}")
        if not args.eval:
            return {}
        truth = ground_truth(args.bag, args.task, cam.topic, args.label_topic)
        deadline = time.monotonic() + args.settle
        last_count, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:  # until descriptions stop arriving
            spin(0.1)
            if len(descriptions) != last_count:
                last_count, quiet_since = len(descriptions), time.monotonic()
            elif time.monotonic() - quiet_since > 2.0 and descriptions:
                break
        report = score(descriptions, truth, args.metric, sent)
        report.update(bag=str(args.bag), topic=cam.topic, task=args.task,
                      labelled_frames=len(truth))
        return report
    finally:
        cam.close()


def main(argv: list[str] | None = None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.utilities import remove_ros_args

    if argv is None:
        argv = sys.argv[1:]
    args = make_parser().parse_args(remove_ros_args(["gm_skip_bag_replay", *argv])[1:])
    rclpy.init(args=["gm_skip_bag_replay", *argv])
    node = rclpy.create_node("gm_skip_bag_replay")
    try:
        report = replay(args, node, log=lambda s: node.get_logger().info(s))
        if args.eval:
            text = json.dumps(report, indent=2)
            if args.out:
                from gm_skip_ros.io import atomic_write_text

                atomic_write_text(args.out, text + "\n")
            print(text)
    except GmSkipError as exc:
        print(f"gm_skip_bag_replay: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
