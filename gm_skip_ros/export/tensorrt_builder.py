"""Build TensorRT engines from an export directory, through the engine cache.

Written against the documented TensorRT 10 Python API (``trt.Builder``,
``trt.OnnxParser``, ``IBuilderConfig.set_memory_pool_limit``, optimisation profiles,
timing cache, ``build_serialized_network``). TensorRT cannot be installed in the
workplace this was written in (no binary wheel on PyPI, none on the GPU machines), so the
build itself is UNTESTED here; everything around it (keys, validation, atomic writes,
build-only, profile choice) is plain Python in :mod:`gm_skip_ros.export.engine_cache`
and is tested.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.export.engine_cache import (
    EngineKey,
    ProfileOptions,
    check_precision,
    get_or_build,
    profile_from_onnx,
)
from gm_skip_ros.export.onnx_export import GRAPH_FILES, read_manifest
from gm_skip_ros.io import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE = 4 << 30
TIMING_CACHE = "timing.cache"


def import_tensorrt():
    """``import tensorrt`` or GmSkipError naming the alternative backend."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError as exc:
        raise GmSkipError(
            f"TensorRT is not available here ({exc}); use backend onnxruntime (CPU or CUDA "
            "execution provider), or install TensorRT for this CUDA version") from None
    return trt


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        raise GmSkipError("TensorRT needs a CUDA GPU and none is visible; use backend "
                          "onnxruntime on the CPU")
    return torch.cuda.get_device_name(torch.cuda.current_device())


def external_data_files(onnx_path) -> list[str]:
    """Relative paths of the external data files an ONNX graph's tensors point to."""
    import onnx

    def tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("g"):
                    yield from tensors(a.g)
                for g in a.graphs:
                    yield from tensors(g)

    m = onnx.load(str(onnx_path), load_external_data=False)
    out = set()
    for t in tensors(m.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            out.update(e.value for e in t.external_data if e.key == "location")
    return sorted(out)


def weights_key(onnx_dir, graph: str, man: dict) -> str:
    """sha256 naming the weights ``graph`` computes with: the manifest's model identity
    (config and weights sha256) and the (manifest-verified) digests of the graph's external
    data files. Graph bytes alone do not: with weights beside the .onnx, two models of one
    architecture export byte-identical graphs."""
    d = Path(onnx_dir)
    files = man.get("files", {})
    ext = {}
    for rel in external_data_files(d / graph):
        ext[rel] = files.get(rel) or sha256_file(d / rel)
    ident = man.get("model_identity") or {}
    parts = {"config_sha256": ident.get("config_sha256"),
             "weights_sha256": ident.get("weights_sha256"), "external_data": ext}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def engine_keys(onnx_dir, precision: str, *, tensorrt_version: str, gpu: str,
                options: ProfileOptions = ProfileOptions(),
                workspace_bytes: int = DEFAULT_WORKSPACE) -> dict[str, EngineKey]:
    """The cache key of each graph's engine: the graph's sha256 as verified against the
    manifest, and the weights it uses (:func:`weights_key`), among the rest."""
    check_precision(precision)
    d = Path(onnx_dir)
    man = read_manifest(d)  # verifies every file's sha256 against the manifest
    files = man.get("files", {})
    return {g: EngineKey(graph=g, onnx_sha256=files.get(g) or sha256_file(d / g),
                         precision=precision,
                         tensorrt_version=tensorrt_version, gpu_name=gpu,
                         plan_sha256=man.get("plan_sha256"),
                         profile=profile_from_onnx(d / g, options),
                         workspace_bytes=int(workspace_bytes),
                         weights_sha256=weights_key(d, g, man))
            for g in GRAPH_FILES}


def build_serialized(onnx_path: Path, key: EngineKey, timing_cache: Path | None) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine for ``key`` (TensorRT API)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise GmSkipError(f"TensorRT cannot parse {onnx_path.name}: {errs[:500]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, key.workspace_bytes)
    if key.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if key.precision == "int8":
        # no calibrator: int8 needs an ONNX with Q/DQ nodes (explicit quantisation)
        has_qdq = any(network.get_layer(i).type == trt.LayerType.QUANTIZE
                      for i in range(network.num_layers))
        if not has_qdq:
            raise GmSkipError("int8 needs a quantised (Q/DQ) ONNX export, which gm-skip export "
                              "does not produce; use --precision fp16")
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for name, (mn, opt, mx) in key.profile.items():
        profile.set_shape(name, tuple(mn), tuple(opt), tuple(mx))
    config.add_optimization_profile(profile)
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=True)
    try:
        serialized = builder.build_serialized_network(network, config)
    except (MemoryError, RuntimeError) as exc:
        raise GmSkipError(f"TensorRT build of {onnx_path.name} failed ({exc}); if the GPU ran out "
                          "of memory, lower the workspace (--workspace-gb) or the maximum "
                          "shapes (--max-seq/--max-past), or free the GPU") from None
    if serialized is None:
        raise GmSkipError(f"TensorRT could not build {onnx_path.name} ({key.precision}); see the "
                          "TensorRT log above (out of GPU memory: lower --workspace-gb or "
                          "--max-seq/--max-past); nothing was written to the cache")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def build_engines(onnx_dir, cache_dir, precision: str = "fp16", *,
                  options: ProfileOptions = ProfileOptions(),
                  workspace_bytes: int = DEFAULT_WORKSPACE) -> dict[str, tuple[Path, bool]]:
    """Build (or reuse) the vision and decoder engines; returns graph -> (path, built_now)."""
    trt = import_tensorrt()
    keys = engine_keys(onnx_dir, precision, tensorrt_version=trt.__version__, gpu=gpu_name(),
                       options=options, workspace_bytes=workspace_bytes)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    timing = cache_dir / TIMING_CACHE
    out = {}
    for g, key in keys.items():
        out[g] = get_or_build(cache_dir, key,
                              lambda g=g, key=key: build_serialized(Path(onnx_dir) / g, key, timing))
    return out
