"""gm-skip export: a (pruned) model to ONNX (vision graph, embedding matrix, decoder with KV)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("export", help="export a (pruned) model to ONNX for the runtimes",
                       description="Apply the plan (blocks physically removed), then write "
                       "vision.onnx, decoder.onnx (with past key/values), embed_tokens.npy, the "
                       "processor and manifest.json to --out, atomically.")
    p.add_argument("--model", required=True, metavar="DIR", help="local Hugging Face model dir")
    p.add_argument("--plan", default=None, metavar="PLAN.json", help="skip plan (default: full)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--exporter", default="auto", choices=("auto", "dynamo", "torchscript"),
                   help="auto: dynamo, falling back to the TorchScript exporter (default)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from gm_skip_ros.commands._common import quiet_transformers
    from gm_skip_ros.export.onnx_export import export_vlm, read_manifest
    from gm_skip_ros.search.plan import load_pruned_vlm

    quiet_transformers()
    vlm = load_pruned_vlm(args.model, args.plan)
    out = export_vlm(vlm, args.out, plan_path=args.plan, opset=args.opset, exporter=args.exporter)
    man = read_manifest(out)
    summary = {"out": str(out), "opset": man["opset"],
               "exporters": {k: v["exporter"] for k, v in man["graphs"].items()},
               "blocks": f"{man['blocks_active']}/{man['blocks_total']}",
               "plan_sha256": man["plan_sha256"]}
    print(json.dumps(summary, indent=2))
    return 0
