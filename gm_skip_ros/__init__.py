"""gm_skip_ros: GM-Skip metric-guided transformer block skipping for VLMs, as a ROS 2 package.

Layers (each imports only from the ones above it in this list):
``errors``/``io`` -> ``models`` -> ``data`` -> ``search`` -> ``export`` -> ``runtime`` -> ``ros``/``cli``.
Only ``gm_skip_ros.ros`` imports rclpy.
"""
# The rosidl-generated message module (gm_skip_ros.msg) is installed by CMake into the
# interpreter's site-packages/gm_skip_ros/, while the Python code may be imported from a
# source checkout or an editable install. Extending __path__ lets both halves of the
# package be found wherever each was installed (see README, "Package structure").
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
