"""`gm-skip make-bag`: write a rosbag2 bag of synthetic driving scenes with ground truth."""
from __future__ import annotations

import argparse

SIZES = ("640x480", "1920x1080")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 640x480 (got {text!r})")
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError(f"size must be at least 32x32 (got {text!r})")
    return w, h


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "make-bag",
        help="write a rosbag2 bag of synthetic driving scenes with ground-truth labels",
        description=(
            "Render N seeded driving scenes and write them as a rosbag2 bag: sensor_msgs/Image "
            "(rgb8) on /sensing/camera/camera0/image_rect_color, CameraInfo, optionally jpeg "
            "CompressedImage, and gm_skip_ros/msg/SceneLabel ground truth on "
            "/gm_skip/ground_truth with the image's header stamp."),
    )
    p.add_argument("--out", required=True, help="bag directory to create")
    p.add_argument("--frames", type=int, default=100, help="number of frames (default 100)")
    p.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap",
                   help="rosbag2 storage plugin (default mcap)")
    p.add_argument("--size", type=_size, default=(640, 480), metavar="WxH",
                   help=f"image size, e.g. {' or '.join(SIZES)} (default 640x480)")
    p.add_argument("--fps", type=float, default=10.0, help="frame rate of the stamps (default 10)")
    p.add_argument("--compressed", action="store_true",
                   help="also write jpeg CompressedImage on .../image_rect_color/compressed")
    p.add_argument("--no-camera-info", dest="camera_info", action="store_false",
                   help="do not write CameraInfo")
    p.add_argument("--force", action="store_true", help="replace an existing bag at --out")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from tqdm import tqdm

    from gm_skip_ros.data.rosbag import write_scene_bag

    w, h = args.size
    t0 = time.perf_counter()
    with tqdm(total=args.frames, unit="frame", desc="make-bag", leave=False) as bar:
        path = write_scene_bag(args.out, args.frames, args.seed, storage=args.storage,
                               width=w, height=h, fps=args.fps, compressed=args.compressed,
                               camera_info=args.camera_info, overwrite=args.force,
                               progress=bar.update)
    dt = time.perf_counter() - t0
    size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
    print(f"wrote {path} ({args.storage}): {args.frames} frames {w}x{h} at {args.fps:g} fps, "
          f"seed {args.seed}{', +jpeg' if args.compressed else ''}, {size_mb:.1f} MB "
          f"in {dt:.1f} s")
    return 0
