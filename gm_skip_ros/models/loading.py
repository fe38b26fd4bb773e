"""Loading a VLM from a local Hugging Face directory, and turning (image, prompt) into
model inputs.

Only local directories, only safetensors weights, ``trust_remote_code`` off unless asked:
a model that arrives on a vehicle must not execute code or unpickle weights.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.models.families import (
    Family,
    custom_family,
    family_for_model_type,
    resolve_blocks,
)

log = logging.getLogger(__name__)

# config fields that do not change what the model computes
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "torch_dtype", "dtype",
                         "_commit_hash", "architectures"}


def check_model_dir(model_dir: str | Path) -> Path:
    """Raise a GmSkipError unless ``model_dir`` looks like a complete local HF model."""
    d = Path(model_dir)
    if not d.is_dir():
        raise GmSkipError(f"model directory {str(d)!r} does not exist; pass a local Hugging Face "
                          "model directory (config.json + *.safetensors)")
    if not (d / "config.json").is_file():
        raise GmSkipError(f"{d}/config.json is missing: not a Hugging Face model directory "
                          "(save one with model.save_pretrained(DIR))")
    weights = weight_files(d)
    if not weights:
        has_bin = any(d.glob("*.bin")) or any(d.glob("*.pt"))
        hint = (" (found pickled *.bin weights, which are not loaded for safety: convert them "
                "with model.save_pretrained(DIR, safe_serialization=True))" if has_bin else "")
        raise GmSkipError(f"no *.safetensors weights in {d}{hint}")
    return d


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model dir; checks that every indexed shard exists."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise GmSkipError(f"{index} is not a valid safetensors index ({exc})") from None
        missing = [s for s in shards if not (model_dir / s).is_file()]
        if missing:
            raise GmSkipError(f"model directory {model_dir} is partial: {len(missing)} weight "
                              f"shard(s) missing, e.g. {missing[0]}; copy the complete directory")
        return [model_dir / s for s in shards]
    return sorted(model_dir.glob("*.safetensors"))


def config_sha256(config) -> str:
    """Hash of the config fields that define the computation (JSON, sorted keys)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in sorted(x.items()) if k not in _VOLATILE_CONFIG_KEYS}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return hashlib.sha256(json.dumps(clean(d), sort_keys=True, default=str).encode()).hexdigest()


def weights_sha256(model_dir: Path) -> str:
    """sha256 over the safetensors files' contents (name-ordered)."""
    h = hashlib.sha256()
    for f in weight_files(Path(model_dir)):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class LoadedVLM:
    """A loaded model with its processor and block layout."""

    model: torch.nn.Module
    processor: object
    family: Family
    model_dir: Path
    device: torch.device
    original_identity: dict = field(default_factory=dict)

    @property
    def decoder_blocks(self) -> torch.nn.ModuleList:
        return resolve_blocks(self.model, self.family.decoder_path, "decoder")

    @property
    def vision_blocks(self) -> torch.nn.ModuleList | None:
        if self.family.vision_path is None:
            return None
        return resolve_blocks(self.model, self.family.vision_path, "vision")

    @property
    def num_decoder_blocks(self) -> int:
        return len(self.decoder_blocks)

    @property
    def num_vision_blocks(self) -> int:
        vb = self.vision_blocks
        return 0 if vb is None else len(vb)

    def identity(self) -> dict:
        """Identity of the model *as loaded from disk* (before any skipping/removal)."""
        return dict(self.original_identity)


def load_vlm(model_dir: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None,
             trust_remote_code: bool = False, decoder_path: str | None = None,
             vision_path: str | None = None, with_processor: bool = True) -> LoadedVLM:
    """Load a VLM from a local directory with ``AutoModelForImageTextToText``/``AutoProcessor``.

    dtype: None means float32 on CPU (half precision is slow or unsupported there) and
    the checkpoint's dtype on CUDA.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    d = check_model_dir(model_dir)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GmSkipError("device 'cuda' requested but CUDA is not available; use device cpu")
    try:
        config = AutoConfig.from_pretrained(d, local_files_only=True,
                                            trust_remote_code=trust_remote_code)
    except (ValueError, OSError) as exc:
        raise GmSkipError(f"cannot read the config in {d}: {str(exc).splitlines()[0]} "
                          "(custom architectures need --trust-remote-code)") from None
    if decoder_path:
        family = custom_family(config.model_type, decoder_path, vision_path)
    else:
        family = family_for_model_type(config.model_type)
    if dtype is None:
        dtype = torch.float32 if dev.type == "cpu" else "auto"
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            d, local_files_only=True, use_safetensors=True, dtype=dtype,
            trust_remote_code=trust_remote_code,
        )
    except (ValueError, OSError, RuntimeError) as exc:
        raise GmSkipError(f"cannot load the model in {d}: {str(exc).splitlines()[0]}") from None
    model = model.to(dev).eval()
    processor = None
    if with_processor:
        try:
            processor = AutoProcessor.from_pretrained(d, local_files_only=True,
                                                      trust_remote_code=trust_remote_code)
        except (ValueError, OSError, TypeError) as exc:
            raise GmSkipError(f"cannot load the processor in {d}: {str(exc).splitlines()[0]} "
                              "(the directory needs the tokenizer and processor files saved "
                              "with processor.save_pretrained)") from None
    vlm = LoadedVLM(model=model, processor=processor, family=family, model_dir=d, device=dev)
    vlm.decoder_blocks  # noqa: B018  (validates the block path early)
    vlm.original_identity = {
        "path": str(d.resolve()),
        "architecture": (config.architectures or [type(model).__name__])[0],
        "model_type": config.model_type,
        "family": family.name,
        "config_sha256": config_sha256(config),
        "weights_sha256": weights_sha256(d),
        "num_decoder_blocks": vlm.num_decoder_blocks,
        "num_vision_blocks": vlm.num_vision_blocks,
    }
    return vlm


# --------------------------------------------------------------------------------------
# Inputs

def to_pil(image_rgb: np.ndarray):
    from PIL import Image

    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image_rgb.shape} "
                         f"{image_rgb.dtype}")
    return Image.fromarray(image_rgb, mode="RGB")


def prompt_text(processor, prompt: str) -> str:
    """The full text fed to the model for ``prompt`` (chat template, generation prompt)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=False)
    image_token = getattr(processor, "image_token", "<image>")
    return f"{image_token}{prompt}"


def build_inputs(processor, image_rgb: np.ndarray, prompt: str, answer: str | None = None
                 ) -> tuple[dict, int]:
    """Model inputs for one image and prompt, optionally followed by a reference answer.

    Returns ``(inputs, prompt_len)``: a dict of batch-1 tensors the model's ``forward`` and
    ``generate`` accept, and the number of tokens before the answer (``input_ids`` length
    when ``answer`` is None). The answer tokens are those the tokenizer produces after the
    prompt, so teacher-forced scoring sees exactly what generation would produce.
    """
    text = prompt_text(processor, prompt)
    image = to_pil(image_rgb)
    enc = processor(images=[image], text=[text], return_tensors="pt")
    inputs = dict(enc)
    prompt_len = int(inputs["input_ids"].shape[1])
    if answer is None or not answer.strip():
        return inputs, prompt_len
    full = dict(processor(images=[image], text=[text + " " + answer.strip()],
                          return_tensors="pt"))
    ids_p, ids_f = inputs["input_ids"][0], full["input_ids"][0]
    if ids_f.shape[0] > prompt_len and torch.equal(ids_f[:prompt_len], ids_p):
        return full, prompt_len
    # the tokenizer merged across the boundary: append the answer's own tokens
    tok = getattr(processor, "tokenizer", processor)
    ans = torch.tensor([tok(" " + answer.strip(), add_special_tokens=False)["input_ids"]],
                       dtype=torch.long)
    merged = dict(inputs)
    merged["input_ids"] = torch.cat([inputs["input_ids"], ans], dim=1)
    for key in ("attention_mask", "token_type_ids", "mm_token_type_ids"):
        if key in merged:
            fill = 1 if key == "attention_mask" else 0
            merged[key] = torch.cat([merged[key], torch.full_like(ans, fill)], dim=1)
    return merged, prompt_len
