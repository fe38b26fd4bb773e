"""Helpers of the ROS integration tests: a test-specific DDS domain on loopback, a client
node in the test process, and the node under test started as its own process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PARAM_FILE = REPO / "config" / "gm_skip.param.yaml"


def ros_env(domain_id: int) -> dict[str, str]:
    """Environment for the processes of one test: its own domain, discovery on loopback."""
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1", AMENT_PREFIX_PATH=str(VENV_BIN.parent))
    env.pop("ROS_LOCALHOST_ONLY", None)
    return env


def test_domain_id(offset: int = 0) -> int:
    """A domain id derived from this pytest process's pid (0..232 are valid for Fast DDS)."""
    return 1 + (os.getpid() * 7 + offset) % 200


test_domain_id.__test__ = False  # not a test


class NodeProcess:
    """A process started with ``subprocess``; output goes to a log file read on failure."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=str(log_path.parent))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGINT, as Ctrl-C or a launch system would; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def start_vlm_node(model_dir, log_path: Path, env: dict[str, str], *params: str,
                   remap: tuple[str, ...] = ()) -> NodeProcess:
    """``vlm_node --ros-args --params-file config/gm_skip.param.yaml -p model_dir:=...``."""
    argv = [str(VENV_BIN / "vlm_node"), "--ros-args", "--params-file", str(PARAM_FILE),
            "-p", f"model_dir:={model_dir}"]
    for p in params:
        argv += ["-p", p]
    for r in remap:
        argv += ["-r", r]
    return NodeProcess(argv, env, log_path)


class RosClient:
    """An rclpy node in the test process, on its own context and domain."""

    def __init__(self, domain_id: int, name: str = "gm_skip_test_client"):
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy = rclpy
        self.context = rclpy.Context()
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(context=self.context, domain_id=domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def collect(self, msg_type, topic: str, qos=10) -> list:
        """Subscribe and return the list that received messages are appended to, as
        (monotonic receive time, message)."""
        got: list = []
        self.node.create_subscription(msg_type, topic,
                                      lambda m: got.append((time.monotonic(), m)), qos)
        return got

    def spin_until(self, cond, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            self.executor.spin_once(timeout_sec=0.02)
        return bool(cond())

    def spin_for(self, seconds: float) -> None:
        self.spin_until(lambda: False, seconds)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)
