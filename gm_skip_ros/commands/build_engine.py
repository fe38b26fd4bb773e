"""gm-skip build-engine: TensorRT engines for an export directory, through the safe cache."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("build-engine", help="build (or reuse) TensorRT engines for an export",
                       description="Builds the vision and decoder engines from an export "
                       "directory (gm-skip export) into a cache keyed by ONNX sha256 + precision "
                       "+ TensorRT version + GPU + plan; a cached engine is served only if its "
                       "sidecar matches, otherwise it is rebuilt. Needs TensorRT and a GPU.")
    p.add_argument("--onnx-dir", required=True, metavar="DIR", help="export directory")
    p.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "int8"))
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="engine cache (default $GM_SKIP_CACHE/engines or ~/.cache/gm_skip_ros/engines)")
    p.add_argument("--build-only", action="store_true",
                   help="build and store the engines, do not load them (pre-build on the vehicle)")
    p.add_argument("--workspace-gb", type=float, default=4.0, help="workspace pool limit (GiB)")
    p.add_argument("--max-seq", type=int, default=512, help="longest prompt (tokens) in the profile")
    p.add_argument("--max-past", type=int, default=512, help="longest KV cache in the profile")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from gm_skip_ros.export.engine_cache import ProfileOptions
    from gm_skip_ros.export.onnx_export import read_manifest
    from gm_skip_ros.export.tensorrt_builder import build_engines, import_tensorrt
    from gm_skip_ros.runtime import default_cache_dir

    read_manifest(args.onnx_dir)  # a clear error before TensorRT is even looked for
    trt = import_tensorrt()
    opts = ProfileOptions(max_seq=args.max_seq, opt_seq=min(256, args.max_seq),
                          max_past=args.max_past, opt_past=min(256, args.max_past))
    cache = args.cache_dir or default_cache_dir() / "engines"
    res = build_engines(args.onnx_dir, cache, args.precision, options=opts,
                        workspace_bytes=int(args.workspace_gb * (1 << 30)))
    if not args.build_only:  # check that each engine deserializes on this machine
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        for g, (path, _) in res.items():
            data = path.read_bytes()
            if runtime.deserialize_cuda_engine(data) is None:
                raise RuntimeError(f"engine {path} does not deserialize")
    print(json.dumps({g: {"engine": str(p), "built": b} for g, (p, b) in res.items()}, indent=2))
    return 0
