"""Arguments shared by several gm-skip sub-commands (one definition each)."""
from __future__ import annotations

import argparse
import json
import sys


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=required, metavar="DIR",
                   help="local Hugging Face model directory (config.json + *.safetensors)")
    g.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow custom modelling code shipped with the model (off by default)")
    g.add_argument("--decoder-path", metavar="PATH",
                   help="dotted path to the decoder ModuleList, for architectures not in the "
                   "family table (e.g. model.language_model.layers)")
    g.add_argument("--vision-path", metavar="PATH", help="dotted path to the vision ModuleList")


def add_data_args(p: argparse.ArgumentParser, default_split: str | None = None) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, metavar="DATA",
                   help="JSONL file or rosbag2 bag (directory, .mcap or .db3)")
    g.add_argument("--task", default="classify", choices=("classify", "caption"),
                   help="for bags: which question the ground truth answers (default classify)")
    g.add_argument("--split", default=default_split, choices=("calib", "heldout", "all"),
                   help=f"deterministic split by sample id (default {default_split or 'all'})")
    g.add_argument("--holdout-fraction", type=float, default=0.3,
                   help="fraction of samples in the held-out split (default 0.3)")
    g.add_argument("--limit", type=int, default=None, help="use at most N samples")
    g.add_argument("--image-topic", default=None, help="bag camera topic (default: auto)")
    g.add_argument("--label-topic", default=None,
                   help="bag ground-truth topic (default /gm_skip/ground_truth)")


def add_metric_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", default="accuracy", metavar="M",
                   help="accuracy | exact_match | cider | module:function (default accuracy)")
    p.add_argument("--max-new-tokens", type=int, default=16,
                   help="greedy generation length per sample (default 16)")


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads of this process (default: torch's choice). On a "
                   "machine shared with other busy processes use 1: torch's threads wait for "
                   "each other and a search ran 90x slower with 2 threads than with 1")


def apply_threads(args) -> None:
    """Set torch's intra-op threads from ``--threads`` (None: leave torch's choice)."""
    if args.threads is None:
        return
    import torch

    from gm_skip_ros.errors import GmSkipError

    if args.threads < 1:
        raise GmSkipError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)


def load_model(args, with_processor: bool = True):
    from gm_skip_ros.models import load_vlm

    return load_vlm(args.model, device=args.device, trust_remote_code=args.trust_remote_code,
                    decoder_path=args.decoder_path, vision_path=args.vision_path,
                    with_processor=with_processor)


def load_data(args, split: str | None = "__args__"):
    from gm_skip_ros.data import open_dataset

    sp = args.split if split == "__args__" else split
    return open_dataset(args.data, task=args.task, split=None if sp in (None, "all") else sp,
                        holdout_fraction=args.holdout_fraction, limit=args.limit,
                        image_topic=args.image_topic, label_topic=args.label_topic)


def data_info(args, samples, split) -> dict:
    """The plan's ``data`` record of samples read with the shared data arguments."""
    return describe_data(args.data, args.task, samples, split, args.holdout_fraction)


def describe_data(source, task: str, samples, split: str | None = None,
                  holdout_fraction: float | None = None) -> dict:
    """The plan's ``data`` record: where the samples came from, how many, their sha256."""
    from gm_skip_ros.search.plan import data_sha256

    info = {"source": str(source), "task": task, "split": split or "all"}
    if holdout_fraction is not None:
        info["holdout_fraction"] = holdout_fraction
    info.update(num_samples=len(samples), sha256=data_sha256(samples))
    return info


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
