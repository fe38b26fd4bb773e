"""`colcon build` of a ROS 2 workspace with this repository in src/: the messages are
generated and the node, its Python package, config and launch files are installed.

Runs against the ROS 2 wheels of the venv (as on a machine with a ROS installation, minus
the CMAKE_PROJECT_INCLUDE fix that the wheels need, see README "Package structure")."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ros_support import REPO, VENV_BIN

pytestmark = [pytest.mark.ros, pytest.mark.slow]

VENV = VENV_BIN.parent
IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "install", "log", "out", ".whl",
                                ".gl", "__pycache__", ".pytest_cache", "*.egg-info")


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory):
    colcon = VENV_BIN / "colcon"
    if not colcon.exists():
        pytest.skip("colcon is not installed in the venv (pip install colcon-core "
                    "colcon-cmake colcon-ros); cannot test the colcon build")
    ws = tmp_path_factory.mktemp("ws")
    shutil.copytree(REPO, ws / "src" / "gm_skip_ros", ignore=IGNORE)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV),
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(colcon), "build", "--base-paths", "src", "--event-handlers", "console_direct-",
           "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF",
           f"-DCMAKE_PROJECT_INCLUDE={ws}/src/gm_skip_ros/cmake/fix_wheel_include_dirs.cmake"]
    r = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    log = r.stdout[-4000:] + r.stderr[-4000:]
    assert r.returncode == 0, log
    return ws / "install" / "gm_skip_ros", env


def test_colcon_installs_messages_python_package_and_share_files(colcon_install):
    prefix, _ = colcon_install
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages" / "gm_skip_ros"
    assert (site / "msg" / "_scene_description.py").is_file()
    assert (site / "msg" / "_float64_stamped.py").is_file()
    assert list(site.glob("gm_skip_ros_s__rosidl_typesupport_c*.so"))
    assert (site / "ros" / "vlm_node.py").is_file()
    assert (site / "schema" / "gm_skip.schema.json").is_file()
    assert (site / "__init__.py").read_text() == (REPO / "gm_skip_ros" / "__init__.py").read_text()
    share = prefix / "share" / "gm_skip_ros"
    for rel in ("package.xml", "config/gm_skip.param.yaml", "launch/gm_skip.launch.xml",
                "launch/gm_skip_search.launch.xml", "msg/SceneDescription.msg"):
        assert (share / rel).is_file(), rel
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" /
            "gm_skip_ros").is_file()
    for exe in ("vlm_node", "gm_skip_bag_replay", "gm-skip"):
        path = prefix / "lib" / "gm_skip_ros" / exe
        assert path.is_file() and os.access(path, os.X_OK), exe


def test_installed_package_imports_and_node_runs(colcon_install, tmp_path):
    prefix, env = colcon_install
    site = next((prefix / "lib").glob("python3*/site-packages"))
    env = dict(env, PYTHONPATH=str(site), AMENT_PREFIX_PATH=f"{prefix}{os.pathsep}{VENV}",
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID="99")
    code = ("import gm_skip_ros, gm_skip_ros.ros.vlm_node as n; "
            "from gm_skip_ros.msg import SceneDescription, Float64Stamped; "
            "print(gm_skip_ros.__path__[0]); print(n.__file__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    first, node_file = r.stdout.split()
    assert first == str(site / "gm_skip_ros") and node_file.startswith(str(site))
    # `ros2 run gm_skip_ros vlm_node` runs this file; a missing model is refused cleanly
    r = subprocess.run([str(prefix / "lib" / "gm_skip_ros" / "vlm_node"), "--ros-args", "-p",
                        f"model_dir:={tmp_path / 'missing'}"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "parameter model_dir" in r.stderr, r.stderr
