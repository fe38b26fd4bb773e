"""vlm_node: camera frames in, scene descriptions and latency diagnostics out.

Inputs
  ~/input/image                sensor_msgs/Image (or CompressedImage), sensor-data QoS
Outputs
  ~/output/scene_description   gm_skip_ros/SceneDescription (header copied from the image)
  ~/debug/processing_time_ms   gm_skip_ros/Float64Stamped: conversion + inference of a frame
  ~/debug/cyclic_time_ms       gm_skip_ros/Float64Stamped: time between inference starts
  ~/debug/pipeline_latency_ms  gm_skip_ros/Float64Stamped: publish time - image stamp
  /diagnostics                 diagnostic_msgs/DiagnosticArray

The subscription callback only stores the newest frame (:mod:`latest_frame`); the model runs
in a worker thread on the newest frame, at most ``max_inference_rate_hz`` times a second.
Parameters: :mod:`gm_skip_ros.ros.parameters`. Configuration problems (bad parameter,
missing model, backend unavailable) stop the node at start with exit code 2 and a message
naming the parameter; per-frame problems are counted, logged (rate-limited) and reported
in /diagnostics, and the node keeps running.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.msg import Float64Stamped, SceneDescription
from gm_skip_ros.ros import parameters as params
from gm_skip_ros.data.image_conversion import (
    ImageConversionError,
    compressed_to_rgb,
    raw_to_rgb,
    validate_raw,
)
from gm_skip_ros.ros.latest_frame import LatestFrameWorker

_ROS_TYPES = {
    str: ParameterType.PARAMETER_STRING,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    bool: ParameterType.PARAMETER_BOOL,
}
#: A repeated per-frame problem is logged at most this often (seconds).
LOG_EVERY_S = 10.0


def descriptor_for(p: params.Param) -> ParameterDescriptor:
    """The ROS ParameterDescriptor of one entry of the parameter table."""
    d = ParameterDescriptor(name=p.name, type=_ROS_TYPES[p.type], description=p.description,
                            read_only=p.read_only)
    if p.choices:
        d.additional_constraints = "one of: " + ", ".join(p.choices)
    if p.type is float and p.minimum is not None:
        d.floating_point_range = [FloatingPointRange(
            from_value=float(p.minimum), to_value=float(p.maximum), step=0.0)]
    if p.type is int and p.minimum is not None:
        d.integer_range = [IntegerRange(from_value=int(p.minimum), to_value=int(p.maximum),
                                        step=1)]
    return d


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _cv_bridge():
    """cv_bridge's CvBridge when the ROS installation has a working one, else None."""
    try:
        from cv_bridge import CvBridge

        bridge = CvBridge()
        probe = Image(height=1, width=2, encoding="bgr8", step=6, data=bytes([1, 2, 3] * 2))
        if bridge.imgmsg_to_cv2(probe, "rgb8").tolist() != [[[3, 2, 1], [3, 2, 1]]]:
            return None
        return bridge
    except Exception:  # noqa: BLE001 - absent, or the broken ROS 1 copy from PyPI
        return None


class VlmNode(Node):
    """The perception node; construction raises GmSkipError on a configuration problem."""

    def __init__(self, **kwargs):
        super().__init__(params.NODE_NAME, **kwargs)
        self._lock = threading.Lock()
        self._values = self._declare_parameters()
        self._backend = self._create_backend()
        self._bridge = None if self._values["use_compressed_image"] else _cv_bridge()

        # counters and last values for /diagnostics (guarded by _lock)
        self._received = 0
        self._rejected: Counter[str] = Counter()
        self._stamps_backwards = 0
        self._backend_errors = 0
        self._last_error = ""
        self._last_error_period = False
        self._period_rejected = 0
        self._period_backwards = 0
        self._period_max_latency: float | None = None
        self._last_latency: float | None = None
        self._last_processing: float | None = None
        self._last_stamp_ns: int | None = None
        self._last_start: float | None = None
        self._last_log: dict[str, float] = {}

        out_qos = QoSProfile(depth=1)
        self._pub_desc = self.create_publisher(SceneDescription, "~/output/scene_description",
                                               out_qos)
        self._pub_proc = self.create_publisher(Float64Stamped, "~/debug/processing_time_ms",
                                               out_qos)
        self._pub_cyc = self.create_publisher(Float64Stamped, "~/debug/cyclic_time_ms", out_qos)
        self._pub_lat = self.create_publisher(Float64Stamped, "~/debug/pipeline_latency_ms",
                                              out_qos)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self._worker = LatestFrameWorker(
            self._process, max_rate_hz=self._values["max_inference_rate_hz"],
            on_error=self._on_worker_error, rejected_exceptions=(ImageConversionError,),
            name="vlm_node-inference").start()
        msg_type = CompressedImage if self._values["use_compressed_image"] else Image
        in_qos = qos_profile_sensor_data
        if self._values["input_reliability"] == "reliable":
            in_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self._sub = self.create_subscription(msg_type, "~/input/image", self._on_image, in_qos)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diag_timer = self.create_timer(self._values["diagnostics_period_s"],
                                             self._publish_diagnostics)
        self.get_logger().info(
            f"ready: backend={self._backend.name} model={self._backend.model_id} "
            f"plan={self._backend.plan_id} blocks={self._backend.blocks_active}/"
            f"{self._backend.blocks_total} input={self._sub.topic_name} ({msg_type.__name__}, "
            f"{self._values['input_reliability']})")

    # ---- configuration ---------------------------------------------------------------------
    def _declare_parameters(self) -> dict[str, Any]:
        values = {}
        for p in params.PARAMETERS:
            try:
                values[p.name] = self.declare_parameter(p.name, p.default,
                                                        descriptor_for(p)).value
            except InvalidParameterTypeException as exc:
                raise GmSkipError(
                    f"parameter {p.name} must be of type {p.type.__name__}"
                    f"{' (write e.g. 500.0, not 500)' if p.type is float else ''}: {exc}"
                ) from None
            except InvalidParameterValueException as exc:
                raise GmSkipError(f"parameter {p.name}: invalid value: {exc}; "
                                  f"{p.description}") from None
        values = params.validate(values)
        params.check_files(values)
        return values

    def _create_backend(self):
        from gm_skip_ros.runtime import create_backend

        v = self._values
        try:
            return create_backend(
                v["backend"], model_dir=v["model_dir"], plan_path=v["plan_path"] or None,
                device=v["device"], onnx_dir=v["onnx_dir"] or None,
                engine_cache_dir=v["engine_cache_dir"] or None, precision=v["precision"],
                num_threads=v["num_threads"] or None)
        except GmSkipError as exc:
            raise GmSkipError(f"backend {v['backend']} could not be created: {exc}") from None
        except (OSError, ValueError) as exc:
            raise GmSkipError(
                f"parameter model_dir/plan_path: could not load {v['model_dir']} with plan "
                f"{v['plan_path'] or '(none)'}: {type(exc).__name__}: {exc}") from None

    def _on_set_parameters(self, changes) -> SetParametersResult:
        new = {}
        for change in changes:
            if change.name not in params.BY_NAME:
                continue  # e.g. use_sim_time
            try:
                new[change.name] = params.check_value(change.name, change.value)
            except GmSkipError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        with self._lock:
            self._values.update(new)
        if "max_inference_rate_hz" in new:
            self._worker.max_rate_hz = new["max_inference_rate_hz"]
        return SetParametersResult(successful=True)

    # ---- per frame ---------------------------------------------------------------------------
    def _on_image(self, msg) -> None:
        """Subscription callback: stamp check and hand-over; never runs the model."""
        stamp = _stamp_ns(msg.header.stamp)
        backwards = False
        with self._lock:
            self._received += 1
            if self._last_stamp_ns is not None and stamp < self._last_stamp_ns:
                self._stamps_backwards += 1
                self._period_backwards += 1
                backwards = True
            self._last_stamp_ns = stamp
        if backwards:
            self._log_limited("stamp_backwards", "image stamps went backwards "
                              f"(now {stamp} ns); counted in /diagnostics")
        self._worker.submit(msg)

    def _to_rgb(self, msg):
        max_pixels = self._values["max_image_pixels"]
        if isinstance(msg, CompressedImage):
            return compressed_to_rgb(msg.format, msg.data, max_pixels)
        if self._bridge is not None:
            # the same checks raw_to_rgb makes (size, encoding, step, data length), so a
            # frame raw_to_rgb would refuse never reaches cv_bridge or the model
            validate_raw(msg.height, msg.width, msg.encoding, msg.step, len(msg.data),
                         max_pixels)
            try:
                return self._bridge.imgmsg_to_cv2(msg, "rgb8")
            except Exception as exc:  # noqa: BLE001 - CvBridgeError and cv2.error
                raise ImageConversionError("unknown_encoding", str(exc)) from None
        return raw_to_rgb(msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step,
                          msg.data, max_pixels)

    def _process(self, msg) -> None:
        """Worker thread: one frame from conversion to published outputs.

        Raises on a rejected frame (ImageConversionError) or a backend failure; the worker
        counts it (rejected / failed, not processed) and hands it to _on_worker_error."""
        start = time.monotonic()
        with self._lock:
            cyclic = None if self._last_start is None else (start - self._last_start) * 1e3
            self._last_start = start
            prompt, max_new = self._values["prompt"], self._values["max_new_tokens"]
        rgb = self._to_rgb(msg)
        result = self._backend.generate(rgb, prompt, max_new)
        t = result.timings
        out = SceneDescription(
            header=msg.header, text=result.text, prompt=prompt,
            model_id=self._backend.model_id, plan_id=self._backend.plan_id or "",
            backend=self._backend.name, blocks_active=int(self._backend.blocks_active),
            blocks_total=int(self._backend.blocks_total),
            tokens_generated=len(result.tokens), preprocess_ms=float(t.preprocess_ms),
            vision_ms=float(t.vision_ms), prefill_ms=float(t.prefill_ms),
            decode_ms=float(t.decode_ms), total_ms=float(t.total_ms))
        self._pub_desc.publish(out)
        now = self.get_clock().now()
        processing = (time.monotonic() - start) * 1e3
        latency = (now.nanoseconds - _stamp_ns(msg.header.stamp)) / 1e6
        stamp = now.to_msg()
        self._pub_proc.publish(Float64Stamped(stamp=stamp, data=processing))
        if cyclic is not None:
            self._pub_cyc.publish(Float64Stamped(stamp=stamp, data=cyclic))
        self._pub_lat.publish(Float64Stamped(stamp=stamp, data=latency))
        with self._lock:
            self._last_processing = processing
            self._last_latency = latency
            if self._period_max_latency is None or latency > self._period_max_latency:
                self._period_max_latency = latency

    def _on_worker_error(self, msg, exc: BaseException) -> None:
        """Worker thread, after _process raised: a rejected frame or a backend failure.
        Counted for /diagnostics and logged (rate-limited); the node keeps running."""
        if isinstance(exc, ImageConversionError):
            with self._lock:
                self._rejected[exc.reason] += 1
                self._period_rejected += 1
            self._log_limited(exc.reason, f"frame rejected ({exc.reason}): {exc}")
            return
        with self._lock:
            self._backend_errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._last_error_period = True
        self._log_limited("backend", f"backend failed on a frame: {type(exc).__name__}: "
                          f"{exc}")

    def _log_limited(self, key: str, text: str) -> None:
        """Log ``text`` the first time ``key`` happens, then at most every LOG_EVERY_S."""
        now = time.monotonic()
        with self._lock:
            last = self._last_log.get(key)
            if last is not None and now - last < LOG_EVERY_S:
                return
            self._last_log[key] = now
        self.get_logger().warning(text)

    # ---- diagnostics -------------------------------------------------------------------------
    def diagnostic_status(self) -> DiagnosticStatus:
        """The status for the period since the last call (and resets the period)."""
        with self._lock:
            stats = self._worker.stats
            budget = self._values["latency_budget_ms"]
            latency = self._period_max_latency
            if latency is None:
                latency = self._last_latency
            level, message = DiagnosticStatus.OK, "ok"
            if self._received == 0:
                message = "no image received yet"
            if latency is not None and latency > budget:
                level, message = DiagnosticStatus.WARN, (
                    f"pipeline latency {latency:.1f} ms over budget {budget:.1f} ms")
            if self._period_rejected or self._period_backwards:
                level = max(level, DiagnosticStatus.WARN)
                message = (f"{self._period_rejected} frame(s) rejected, "
                           f"{self._period_backwards} stamp(s) backwards")
            if latency is not None and latency > 2 * budget:
                level, message = DiagnosticStatus.ERROR, (
                    f"pipeline latency {latency:.1f} ms over twice the budget {budget:.1f} ms")
            if self._last_error_period:
                level, message = DiagnosticStatus.ERROR, f"backend error: {self._last_error}"
            values = {
                "backend": self._backend.name,
                "device": str(self._values["device"]),
                "model_id": self._backend.model_id,
                "plan_id": self._backend.plan_id or "",
                "blocks_active": self._backend.blocks_active,
                "blocks_total": self._backend.blocks_total,
                "latency_budget_ms": f"{budget:.1f}",
                "pipeline_latency_ms": "" if latency is None else f"{latency:.1f}",
                "processing_time_ms": ("" if self._last_processing is None
                                       else f"{self._last_processing:.1f}"),
                "frames_received": self._received,
                "frames_processed": stats.processed,
                "frames_dropped": stats.dropped,
                "frames_rejected": sum(self._rejected.values()),
                "frames_failed": stats.failed,
                **{f"frames_rejected_{k}": n for k, n in sorted(self._rejected.items())},
                "stamps_backwards": self._stamps_backwards,
                "backend_errors": self._backend_errors,
                "last_error": self._last_error,
            }
            self._period_max_latency = None
            self._period_rejected = self._period_backwards = 0
            self._last_error_period = False
        return DiagnosticStatus(
            level=level, name=f"{self.get_name()}: scene description",
            message=message, hardware_id="gm_skip_ros",
            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [self.diagnostic_status()]
        self._pub_diag.publish(arr)

    def stop_worker(self) -> None:
        self._worker.stop(timeout=5.0)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``vlm_node`` (``ros2 run gm_skip_ros vlm_node``)."""
    rclpy.init(args=args)
    node = None
    try:
        node = VlmNode()
        rclpy.spin(node)
    except GmSkipError as exc:
        print(f"vlm_node: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop_worker()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
