"""gm-skip bench: full vs pruned latency on one backend, interleaved, per stage."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("bench", help="latency of the full vs the pruned model on one backend",
                       description="Loads the full and the pruned model on the same backend in "
                       "one process, warms both up, interleaves timed repetitions on a fixed "
                       "image and prompt with a fixed number of new tokens, and reports per-stage "
                       "medians and spread, the measured pruned/full ratio, and the ideal ratio "
                       "implied by the blocks kept and the measured share of time in decoder "
                       "blocks. Set OMP_WAIT_POLICY=PASSIVE.")
    p.add_argument("--model", required=True, metavar="DIR", help="local Hugging Face model dir")
    p.add_argument("--plan", required=True, metavar="PLAN.json", help="skip plan")
    p.add_argument("--backend", default="onnxruntime", choices=("torch", "onnxruntime", "tensorrt"))
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--reps", type=int, default=10, help="timed repetitions per model (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per model (default 2)")
    p.add_argument("--max-new-tokens", type=int, default=16,
                   help="tokens generated per call, eos ignored (default 16)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for torch and ONNX Runtime alike (default: all cores)")
    p.add_argument("--image", default=None, help="image file (default: a synthetic scene)")
    p.add_argument("--prompt", default=None, help="prompt (default: the caption prompt)")
    p.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "int8"),
                   help="TensorRT precision (default fp16)")
    p.add_argument("--exporter", default="auto", choices=("auto", "dynamo", "torchscript"))
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="export/engine cache root (default $GM_SKIP_CACHE or ~/.cache/gm_skip_ros)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write the result here")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="write a bar chart here")
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    from pathlib import Path

    from gm_skip_ros.commands._common import quiet_transformers
    from gm_skip_ros.data.scenes import PROMPTS
    from gm_skip_ros.runtime import create_backend, default_cache_dir
    from gm_skip_ros.runtime import bench as B

    quiet_transformers()
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("note: OMP_WAIT_POLICY is not PASSIVE; idle OpenMP threads may spin and distort "
              "interleaved timings (export OMP_WAIT_POLICY=PASSIVE)")
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    kw = dict(device=args.device, num_threads=args.threads, precision=args.precision,
              exporter=args.exporter, export_cache_dir=cache / "onnx",
              engine_cache_dir=cache / "engines")
    full = create_backend(args.backend, args.model, None, **kw)
    pruned = create_backend(args.backend, args.model, args.plan, **kw)
    image = B.load_image(args.image) if args.image else B.default_image()
    prompt = args.prompt or PROMPTS["caption"]
    res = B.run_bench(full, pruned, image=image, prompt=prompt,
                      max_new_tokens=args.max_new_tokens, reps=args.reps, warmup=args.warmup)
    print(B.format_table(res))
    if args.json:
        B.write_json(res, args.json)
    if args.plot:
        B.plot(res, args.plot)
    return 0
