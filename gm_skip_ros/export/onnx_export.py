"""ONNX export of a (pruned) VLM: vision graph, embedding matrix, decoder graph with KV cache.

Layout of an export directory (written atomically; a reader never sees half of one)::

    vision.onnx          pixel_values (B,3,H,W) -> image_features (B*T,D)
    decoder.onnx         inputs_embeds, attention_mask, position_ids, past_key_values.i.key/value
                         -> logits (B,1,V), present.i.key/value  (see export.graphs)
    embed_tokens.npy     (V, D) float32 embedding matrix; lookup + image merge run in numpy
    processor/           the model's processor (tokenizer, image processor, chat template)
    generation_config.json
    manifest.json        format version, opset, exporter used per graph, input/output names,
                         dynamic axes, decoder shape, model identity, plan hash, block counts,
                         sha256 of every file, library versions

Exporters: ``dynamo`` (``torch.onnx.export(dynamo=True)``), ``torchscript`` (the legacy
tracer, ``dynamo=False``) or ``auto`` (dynamo, falling back to torchscript per graph when
dynamo fails; the manifest records which one produced each graph). The graphs are traced
with batch 2 and a past of length 3 so that no dynamic axis specialises to 0 or 1.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.io import atomic_directory, sha256_file

log = logging.getLogger(__name__)

OPSET = 18
EXPORTERS = ("auto", "dynamo", "torchscript")
FORMAT = "gm_skip_ros.onnx_export"
FORMAT_VERSION = 1
GRAPH_FILES = ("vision.onnx", "decoder.onnx")
EMBED_FILE = "embed_tokens.npy"
MANIFEST = "manifest.json"
# export example sizes: batch 2, past 3, new 4 avoid 0/1 specialisation
_EX_BATCH, _EX_PAST, _EX_SEQ = 2, 3, 4


def plan_sha256(plan_path) -> str:
    """The plan's identity in manifests and cache keys: ``SkipPlan.sha256()`` (canonical
    JSON of its content). Raises GmSkipError for a missing or malformed plan file."""
    from gm_skip_ros.search.plan import load_plan

    return load_plan(plan_path).sha256()


# --------------------------------------------------------------------------------------
# exporting one graph

def _export_graph(module, args, path: Path, *, input_names, output_names, dynamic_axes,
                  dynamic_shapes, opset: int, exporter: str) -> str:
    """Export ``module(*args)`` to ``path`` with the chosen exporter; return the one used."""
    import torch

    tried = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    errors = []
    for which in tried:
        try:
            t0 = time.perf_counter()
            with torch.no_grad():
                if which == "dynamo":
                    prog = torch.onnx.export(
                        module, tuple(args), dynamo=True, opset_version=opset,
                        input_names=input_names, output_names=output_names,
                        dynamic_shapes=dynamic_shapes, verbose=False,
                    )
                    prog.save(str(path), external_data=_needs_external(module))
                    _scope_node_names(path)
                else:
                    torch.onnx.export(
                        module, tuple(args), str(path), dynamo=False, opset_version=opset,
                        input_names=input_names, output_names=output_names,
                        dynamic_axes=dynamic_axes, do_constant_folding=True,
                    )
            log.info("exported %s with %s in %.1f s", path.name, which, time.perf_counter() - t0)
            return which
        except Exception as exc:  # exporter failures are many and varied
            errors.append(f"{which}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            log.warning("%s exporter failed on %s: %s", which, path.name, errors[-1])
            for f in path.parent.glob(path.name + "*"):
                f.unlink()
    raise GmSkipError(f"ONNX export of {path.name} failed ({'; '.join(errors)}); try the other "
                      "--exporter, or report the model type")


def _scope_node_names(path: Path) -> None:
    """Prefix dynamo's node names with their module scope (``/lm/layers.3/mlp/node_Mul_7``),
    as the TorchScript exporter names them, so profilers can attribute time to blocks."""
    import ast

    import onnx

    model_proto = onnx.load(str(path), load_external_data=False)
    for node in model_proto.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    scopes = [s for s in ast.literal_eval(prop.value) if s]
                except (ValueError, SyntaxError):
                    break
                if scopes:
                    node.name = "/" + "/".join(scopes) + "/" + node.name
                break
    onnx.save(model_proto, str(path))


def _needs_external(module) -> bool:
    n = sum(p.numel() * p.element_size() for p in module.parameters())
    return n > 1_800_000_000  # protobuf's 2 GB limit


def _check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise GmSkipError(f"exported {path.name} fails onnx.checker ({str(exc).splitlines()[0]}); "
                          "try the other --exporter") from None


def _io_names(path: Path) -> tuple[list[str], list[str]]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return [i.name for i in m.graph.input], [o.name for o in m.graph.output]


# --------------------------------------------------------------------------------------
# the whole model

def export_vlm(vlm, out_dir, *, plan_path=None, opset: int = OPSET, exporter: str = "auto") -> Path:
    """Export a loaded (pruned) :class:`~gm_skip_ros.models.LoadedVLM` to ``out_dir``.

    Returns ``out_dir``. Raises GmSkipError for an unsupported family (listing the
    supported ones) or when every exporter fails; ``out_dir`` is then left as it was.
    """
    import torch

    from gm_skip_ros.export import graphs as G

    if exporter not in EXPORTERS:
        raise GmSkipError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    model = vlm.model
    G.check_supported(model)
    if next(model.parameters()).device.type != "cpu" or \
            next(model.parameters()).dtype != torch.float32:
        raise GmSkipError("export needs the model on CPU in float32 (load it with device cpu); "
                          "reduced precision is chosen at engine build time")
    shape = G.decoder_shape(model)
    vcfg = model.config.vision_config
    size = int(vcfg.image_size)
    plan_hash = plan_sha256(plan_path) if plan_path is not None else None
    ident = vlm.identity()
    out_dir = Path(out_dir)
    used = {}
    with atomic_directory(out_dir) as tmp:
        # vision graph
        vision = G.VisionGraph(model).eval()
        pix = torch.randn(_EX_BATCH, 3, size, size)
        b = torch.export.Dim("batch", min=1, max=64)
        used["vision.onnx"] = _export_graph(
            vision, (pix,), tmp / "vision.onnx", input_names=G.VISION_INPUTS,
            output_names=G.VISION_OUTPUTS,
            dynamic_axes={"pixel_values": {0: "batch"}, "image_features": {0: "image_tokens"}},
            dynamic_shapes=({0: b},), opset=opset, exporter=exporter,
        )
        # decoder graph
        decoder = G.DecoderGraph(model).eval()
        n = shape.n_blocks
        ex = (
            torch.randn(_EX_BATCH, _EX_SEQ, shape.hidden_size),
            torch.ones(_EX_BATCH, _EX_PAST + _EX_SEQ, dtype=torch.long),
            torch.arange(_EX_PAST, _EX_PAST + _EX_SEQ).repeat(_EX_BATCH, 1),
            *[torch.randn(_EX_BATCH, shape.n_kv_heads, _EX_PAST, shape.head_dim)
              for _ in range(2 * n)],
        )
        in_names = G.DECODER_INPUTS + G.past_names(n)
        out_names = G.DECODER_OUTPUTS + G.present_names(n)
        axes = {"inputs_embeds": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
                "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
        axes.update({k: {0: "batch", 2: "past"} for k in G.past_names(n)})
        axes.update({k: {0: "batch", 2: "total"} for k in G.present_names(n)})
        db = torch.export.Dim("batch", min=1, max=64)
        ds = torch.export.Dim("seq", min=1, max=65536)
        dt = torch.export.Dim("total", min=1, max=131072)
        dp = torch.export.Dim("past", min=0, max=131072)
        dyn_shapes = ({0: db, 1: ds}, {0: db, 1: dt}, {0: db, 1: ds},
                      tuple({0: db, 2: dp} for _ in range(2 * n)))
        used["decoder.onnx"] = _export_graph(
            decoder, ex, tmp / "decoder.onnx", input_names=in_names, output_names=out_names,
            dynamic_axes=axes, dynamic_shapes=dyn_shapes, opset=opset, exporter=exporter,
        )
        for f in GRAPH_FILES:
            _check(tmp / f)
        np.save(tmp / EMBED_FILE, G.embedding_matrix(model).numpy())
        if vlm.processor is not None:
            vlm.processor.save_pretrained(tmp / "processor")
        model.generation_config.save_pretrained(tmp)
        graphs = {}
        for f in GRAPH_FILES:
            ins, outs = _io_names(tmp / f)
            graphs[f] = {"exporter": used[f], "inputs": ins, "outputs": outs}
        graphs["vision.onnx"]["dynamic_axes"] = {"pixel_values": {"0": "batch"}}
        graphs["decoder.onnx"]["dynamic_axes"] = {k: {str(a): v for a, v in d.items()}
                                                  for k, d in axes.items()}
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "opset": opset,
            "exporter": exporter, "graphs": graphs,
            "embedding": {"file": EMBED_FILE, "shape": [shape.vocab_size, shape.hidden_size],
                          "dtype": "float32"},
            "decoder": {"n_blocks": n, "n_kv_heads": shape.n_kv_heads,
                        "head_dim": shape.head_dim, "hidden_size": shape.hidden_size,
                        "vocab_size": shape.vocab_size},
            "image": {"size": size, "token_id": G.image_token_id(model)},
            "model_type": G.model_type(model),
            "model_identity": ident,
            "plan_sha256": plan_hash,
            "blocks_active": n, "blocks_total": ident.get("num_decoder_blocks", n),
            "vision_blocks_active": vlm.num_vision_blocks,
            "vision_blocks_total": ident.get("num_vision_blocks"),
            "versions": _versions(),
            "files": {str(p.relative_to(tmp)): sha256_file(p)
                      for p in sorted(tmp.rglob("*")) if p.is_file()},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


def _versions() -> dict:
    import onnx
    import torch
    import transformers

    import gm_skip_ros

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "gm_skip_ros": gm_skip_ros.__version__}


# --------------------------------------------------------------------------------------
# reading and validating an export directory

def read_manifest(onnx_dir, *, verify_files: bool = True) -> dict:
    """Load and check ``manifest.json`` of an export directory.

    Raises GmSkipError when the manifest is missing, malformed, of another format version,
    or (``verify_files``) when a file is missing or its sha256 differs (corrupt/partial).
    """
    d = Path(onnx_dir)
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise GmSkipError(f"{d} is not an ONNX export directory (no {MANIFEST}); create one "
                          "with `gm-skip export --model DIR [--plan P] --out DIR`")
    try:
        man = json.loads(mpath.read_text())
    except ValueError as exc:
        raise GmSkipError(f"{mpath} is corrupt ({exc}); re-run gm-skip export") from None
    if man.get("format") != FORMAT or man.get("format_version") != FORMAT_VERSION:
        raise GmSkipError(f"{mpath} has format {man.get('format')!r} v{man.get('format_version')}, "
                          f"expected {FORMAT} v{FORMAT_VERSION}; re-run gm-skip export")
    if verify_files:
        for rel, digest in man.get("files", {}).items():
            f = d / rel
            if not f.is_file():
                raise GmSkipError(f"{f} listed in the manifest is missing: the export directory "
                                  "is incomplete; re-run gm-skip export")
            if sha256_file(f) != digest:
                raise GmSkipError(f"{f} does not match its sha256 in the manifest (corrupt or "
                                  "modified); re-run gm-skip export")
    return man


def check_matches(man: dict, onnx_dir, *, model_dir=None, plan_path=None) -> None:
    """Refuse an export made from another model or plan than the ones given."""
    if model_dir is not None:
        from gm_skip_ros.models.loading import config_sha256, weights_sha256
        from transformers import AutoConfig

        ident = man.get("model_identity", {})
        cfg = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        if config_sha256(cfg) != ident.get("config_sha256") or \
                weights_sha256(Path(model_dir)) != ident.get("weights_sha256"):
            raise GmSkipError(f"ONNX export {onnx_dir} was made from another model "
                              f"({ident.get('path')}) than {model_dir}; re-export it or drop "
                              "onnx_dir to export into the cache")
    want = plan_sha256(plan_path) if plan_path is not None else None
    if want != man.get("plan_sha256"):
        raise GmSkipError(f"ONNX export {onnx_dir} was made with plan sha256 "
                          f"{str(man.get('plan_sha256'))[:12]}, not the given "
                          f"{'plan ' + str(want)[:12] if want else 'full model (no plan)'}; "
                          "re-export with the same --plan")


def export_key(model_dir, plan_path=None, *, opset: int = OPSET, exporter: str = "auto") -> str:
    """Cache key of an export: model config + weights hash, plan hash, opset, exporter."""
    from gm_skip_ros.models.loading import check_model_dir, config_sha256, weights_sha256
    from transformers import AutoConfig

    import gm_skip_ros

    d = check_model_dir(model_dir)
    cfg = AutoConfig.from_pretrained(d, local_files_only=True)
    parts = {"config": config_sha256(cfg), "weights": weights_sha256(d),
             "plan": plan_sha256(plan_path) if plan_path is not None else None,
             "opset": opset, "exporter": exporter, "format": FORMAT_VERSION,
             "gm_skip_ros": gm_skip_ros.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def ensure_exported(model_dir, plan_path=None, *, cache_dir, exporter: str = "auto",
                    opset: int = OPSET, vlm=None) -> Path:
    """Export the (pruned) model into ``cache_dir/<name>-<key>`` unless a valid one exists."""
    key = export_key(model_dir, plan_path, opset=opset, exporter=exporter)
    out = Path(cache_dir) / f"{Path(model_dir).resolve().name}-{key}"
    if out.is_dir():
        try:
            read_manifest(out)
            return out
        except GmSkipError as exc:
            log.warning("cached export %s is unusable (%s); exporting again", out, exc)
    if vlm is None:
        from gm_skip_ros.search.plan import load_pruned_vlm

        vlm = load_pruned_vlm(model_dir, plan_path)
    log.info("exporting %s (plan %s) to %s", model_dir, plan_path, out)
    return export_vlm(vlm, out, plan_path=plan_path, opset=opset, exporter=exporter)
