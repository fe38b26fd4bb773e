"""The ``gm-skip`` command line.

Each sub-command lives in ``gm_skip_ros/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a
``run(args) -> int`` callable. Registration must stay cheap (no torch import at module
level) so that ``gm-skip --help`` is instant; heavy imports happen inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from gm_skip_ros.errors import GmSkipError

# Order is the order of `gm-skip --help`.
COMMANDS = (
    "demo",
    "search",
    "apply",
    "eval",
    "compare",
    "make_bag",
    "export",
    "build_engine",
    "bench",
)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gm-skip",
        description="GM-Skip: metric-guided transformer block skipping for vision-language models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"gm_skip_ros.commands.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name != f"gm_skip_ros.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    try:  # strip ROS arguments when started from a launch file
        from rclpy.utilities import remove_ros_args

        argv = remove_ros_args(["gm-skip", *argv])[1:]
    except ImportError:
        pass
    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except GmSkipError as exc:
        print(f"gm-skip {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"gm-skip {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
