"""Inference backends behind one interface (used by the ROS node and ``gm-skip bench``).

>>> backend = create_backend("onnxruntime", model_dir="models/demo_vlm", plan_path="plan.json")
>>> result = backend.generate(image_rgb, "What is the main object?", max_new_tokens=16)
>>> result.text, result.tokens, result.timings.total_ms

Heavy imports (torch model loading, onnxruntime, tensorrt) happen inside the backend that
needs them, so this package imports on a machine without CUDA or TensorRT.
"""
from __future__ import annotations

import os
from pathlib import Path

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.runtime.base import Backend, GenerationResult, StageTimings

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")

__all__ = ["BACKENDS", "Backend", "GenerationResult", "StageTimings", "create_backend",
           "model_id_of", "plan_id_of", "default_cache_dir"]


def default_cache_dir() -> Path:
    """Root of the export/engine caches: ``$GM_SKIP_CACHE`` or ``~/.cache/gm_skip_ros``."""
    return Path(os.environ.get("GM_SKIP_CACHE") or Path.home() / ".cache" / "gm_skip_ros")


def plan_id_of(plan_path) -> str:
    """Short id of a plan file (first 12 hex of its sha256), ``"full"`` without a plan."""
    if plan_path is None:
        return "full"
    from gm_skip_ros.export.onnx_export import plan_sha256

    return plan_sha256(plan_path)[:12]


def model_id_of(identity: dict) -> str:
    """``<directory name>@<weights sha256 prefix>`` from a LoadedVLM identity."""
    return f"{Path(identity['path']).name}@{identity['weights_sha256'][:12]}"


def _set_threads(num_threads: int | None) -> None:
    if num_threads:
        import torch

        torch.set_num_threads(int(num_threads))


def create_backend(kind: str, model_dir, plan_path=None, device: str = "cpu", *,
                   onnx_dir=None, engine_cache_dir=None, precision: str = "fp16",
                   num_threads: int | None = None, dtype=None, export_cache_dir=None,
                   exporter: str = "auto", vlm=None) -> Backend:
    """Build a backend of ``kind`` (``torch``, ``onnxruntime`` or ``tensorrt``).

    model_dir / plan_path: the model and its skip plan (None: the full model).
    device: ``cpu`` or ``cuda`` (``cuda:N``).
    onnx_dir: exported graphs to use (onnxruntime/tensorrt); without it the (pruned) model
        is exported once into ``export_cache_dir`` (default: ``default_cache_dir()/onnx``)
        under a key of model identity + plan hash, and reused.
    engine_cache_dir / precision: TensorRT engine cache and precision (fp32/fp16/int8).
    num_threads: intra-op threads of torch and ONNX Runtime (the same number for both).
    vlm: an already loaded (pruned) LoadedVLM to reuse (torch backend, export).
    Raises GmSkipError for an unknown kind or one that cannot run here.
    """
    if kind not in BACKENDS:
        raise GmSkipError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise GmSkipError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available() and kind != "onnxruntime":
            raise GmSkipError(f"device {device!r} requested but CUDA is not available here; "
                              "use device cpu")
    _set_threads(num_threads)
    if kind == "torch":
        from gm_skip_ros.runtime.torch_backend import TorchBackend

        if vlm is None:
            from gm_skip_ros.search.plan import load_pruned_vlm

            vlm = load_pruned_vlm(model_dir, plan_path, device=device, dtype=dtype)
        ident = vlm.identity()
        return TorchBackend(vlm, model_id=model_id_of(ident), plan_id=plan_id_of(plan_path),
                            blocks_total=ident["num_decoder_blocks"],
                            vision_blocks_total=ident.get("num_vision_blocks"))
    if kind == "tensorrt":
        from gm_skip_ros.runtime.tensorrt_backend import require_tensorrt

        require_tensorrt()  # GmSkipError naming onnxruntime when TensorRT is absent
    if onnx_dir is None:
        from gm_skip_ros.export.onnx_export import ensure_exported

        onnx_dir = ensure_exported(model_dir, plan_path,
                                   cache_dir=export_cache_dir or default_cache_dir() / "onnx",
                                   exporter=exporter, vlm=vlm)
    if kind == "onnxruntime":
        from gm_skip_ros.runtime.onnxruntime_backend import OrtBackend

        return OrtBackend(onnx_dir, model_dir=model_dir, plan_path=plan_path, device=device,
                          num_threads=num_threads)
    from gm_skip_ros.runtime.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(onnx_dir, model_dir=model_dir, plan_path=plan_path, device=device,
                           precision=precision,
                           engine_cache_dir=engine_cache_dir or default_cache_dir() / "engines")
