"""A safe on-disk cache of TensorRT engines (plain Python; needs no TensorRT to test).

An engine is only valid for the exact ONNX content and weights, precision, TensorRT version, GPU,
plan and optimisation profile it was built with. Each engine ``<graph>-<precision>-<digest>.engine``
has a sidecar ``.json`` holding the full key and the engine's sha256. On lookup the sidecar
must parse, its key must equal the wanted key field by field, and the engine bytes must hash
to the recorded sha256; anything else (missing, corrupt, truncated, other precision, other
TensorRT version, other GPU, other plan) is rebuilt, never served. Engines and sidecars are
written atomically, the sidecar last, so a crash mid-build leaves no servable engine.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.io import atomic_write_bytes, atomic_write_json, sha256_file

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
SIDECAR_FORMAT = "gm_skip_ros.engine"
SIDECAR_VERSION = 1


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise GmSkipError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. ``profile``: input name -> [min, opt, max] shapes."""

    graph: str
    onnx_sha256: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    plan_sha256: str | None
    profile: dict = field(default_factory=dict)
    workspace_bytes: int = 0
    # the weights the graph computes with: model identity and external data files (an
    # exporter that writes weights beside the .onnx leaves identical graph bytes for two
    # models of one architecture, so onnx_sha256 alone does not identify the engine)
    weights_sha256: str | None = None

    def __post_init__(self):
        check_precision(self.precision)

    def as_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), sort_keys=True))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:24]

    def filename(self) -> str:
        stem = Path(self.graph).stem
        return f"{stem}-{self.precision}-{self.digest()}.engine"


def engine_path(cache_dir, key: EngineKey) -> Path:
    return Path(cache_dir) / key.filename()


def sidecar_path(engine: Path) -> Path:
    return engine.with_suffix(".json")


def validate(engine: Path, key: EngineKey) -> tuple[bool, str]:
    """(True, "") if ``engine`` may be served for ``key``; else (False, reason)."""
    side = sidecar_path(engine)
    if not engine.is_file():
        return False, "no engine file"
    if not side.is_file():
        return False, "no sidecar (unfinished or foreign engine)"
    try:
        meta = json.loads(side.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        return False, f"corrupt sidecar ({exc})"
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT or \
            meta.get("format_version") != SIDECAR_VERSION:
        return False, "sidecar of another format"
    want = key.as_dict()
    got = meta.get("key", {})
    diff = [k for k in want if got.get(k) != want[k]]
    if diff or set(got) != set(want):
        return False, "key mismatch: " + ", ".join(
            f"{k} {str(got.get(k))[:20]!r} != {str(want[k])[:20]!r}" for k in diff)
    if engine.stat().st_size != meta.get("engine_bytes") or \
            sha256_file(engine) != meta.get("engine_sha256"):
        return False, "engine bytes do not match the sidecar sha256 (corrupt or truncated)"
    return True, ""


def store(cache_dir, key: EngineKey, data: bytes, *, build_s: float | None = None) -> Path:
    """Write engine bytes then the sidecar, each atomically. Returns the engine path."""
    if not data:
        raise GmSkipError(f"TensorRT produced an empty engine for {key.graph}; nothing cached")
    path = engine_path(cache_dir, key)
    atomic_write_bytes(path, data)
    atomic_write_json(sidecar_path(path), {
        "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "key": key.as_dict(),
        "engine_sha256": hashlib.sha256(data).hexdigest(), "engine_bytes": len(data),
        "build_s": build_s,
    })
    return path


def get_or_build(cache_dir, key: EngineKey, build: Callable[[], bytes]) -> tuple[Path, bool]:
    """Return (engine path, built_now). A valid cached engine is served; otherwise
    ``build()`` produces the serialized engine, which is stored. Failures of ``build``
    propagate and leave the cache as it was (stale files of the same key are removed
    only after a successful build replaces them)."""
    import time

    path = engine_path(cache_dir, key)
    ok, why = validate(path, key)
    if ok:
        log.info("engine cache hit: %s", path.name)
        return path, False
    if path.exists() or sidecar_path(path).exists():
        log.warning("cached engine %s not usable (%s): rebuilding", path.name, why)
    t0 = time.perf_counter()
    data = build()
    return store(cache_dir, key, data, build_s=time.perf_counter() - t0), True


def load_valid(engine: Path, key: EngineKey) -> bytes:
    """Engine bytes, re-validated at read time; GmSkipError if not valid for ``key``."""
    ok, why = validate(engine, key)
    if not ok:
        raise GmSkipError(f"engine {engine} is not valid for this model/precision/GPU ({why}); "
                          "run gm-skip build-engine again")
    data = engine.read_bytes()
    if hashlib.sha256(data).hexdigest() != json.loads(sidecar_path(engine).read_text())["engine_sha256"]:
        raise GmSkipError(f"engine {engine} changed while being read; run gm-skip build-engine again")
    return data


# --------------------------------------------------------------------------------------
# optimisation profiles from the ONNX inputs' dynamic axes

@dataclass(frozen=True)
class ProfileOptions:
    """Ranges of the dynamic axes for engine profiles (min, opt, max per symbol).

    batch: images/prompts per call; seq: new tokens per decoder call (prefill prompt
    length at most ``max_seq``); past: cached tokens; total = past + seq.
    """

    max_batch: int = 1
    opt_batch: int = 1
    max_seq: int = 512
    opt_seq: int = 256
    max_past: int = 512
    opt_past: int = 256

    def ranges(self) -> dict[str, tuple[int, int, int]]:
        return {
            "batch": (1, self.opt_batch, self.max_batch),
            "seq": (1, self.opt_seq, self.max_seq),
            "past": (0, self.opt_past, self.max_past),
            "total": (1, self.opt_past + 1, self.max_past + self.max_seq),
            "image_tokens": (1, 1, 1 << 20),
        }


def profile_from_onnx(onnx_path, options: ProfileOptions = ProfileOptions()) -> dict:
    """Input name -> [min, opt, max] shapes for one profile, from the graph's inputs.

    Fixed dims are kept; each symbolic dim must be one of the known axis names (batch,
    seq, past, total), else GmSkipError (an export this builder does not understand).
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    ranges = options.ranges()
    out = {}
    for inp in model.graph.input:
        if inp.name in init:
            continue
        mins, opts, maxs = [], [], []
        for d in inp.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                v = int(d.dim_value)
                mins.append(v), opts.append(v), maxs.append(v)
            else:
                sym = d.dim_param
                if sym not in ranges:
                    raise GmSkipError(f"{Path(onnx_path).name}: input {inp.name} has dynamic axis "
                                      f"{sym!r} with no profile range (known: "
                                      f"{', '.join(ranges)}); re-export with gm-skip export")
                lo, op, hi = ranges[sym]
                mins.append(lo), opts.append(op), maxs.append(hi)
        out[inp.name] = [mins, opts, maxs]
    return out
