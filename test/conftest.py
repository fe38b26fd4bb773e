"""Shared fixtures: tiny models built on the spot (no downloads), small torch thread count."""
import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A saved tiny Llava model directory with tokenizer and processor (random weights)."""
    from gm_skip_ros.models.tiny import build_tiny_vlm

    return build_tiny_vlm("llava", tmp_path_factory.mktemp("models") / "tiny_llava", seed=0)
