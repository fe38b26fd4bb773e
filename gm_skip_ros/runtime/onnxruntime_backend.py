"""ONNX Runtime backend over an export directory (see :mod:`gm_skip_ros.export.onnx_export`).

Session options: intra-op threads = ``num_threads`` (ORT's default when None), inter-op 1,
sequential execution, all graph optimisations, and ``session.intra_op.allow_spinning=0`` so
idle worker threads sleep instead of spinning and stealing the CPU from the rest of the
process (the ROS node, the image conversion, the other model in a benchmark). Set
``OMP_WAIT_POLICY=PASSIVE`` in the environment for the same reason with torch.

The embedding lookup and image-token merge run in numpy on the exported matrix; the vision
and decoder graphs run in ORT. The KV cache goes back in as numpy arrays each step (on
CUDA that is a host round trip per step: fine for small models, IOBinding would avoid it).
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.export import graphs as G
from gm_skip_ros.export.onnx_export import EMBED_FILE, check_matches, read_manifest
from gm_skip_ros.runtime.base import Backend

log = logging.getLogger(__name__)

#: a node inside a decoder block (module path ``lm.layers.N`` of export.graphs.DecoderGraph)
#: TorchScript names nodes ``/lm/layers.3/mlp/...``; dynamo ones are renamed at export to
#: ``/lm/lm.layers.3/lm.layers.3.mlp/.../node_Mul_7`` from their name scopes.
BLOCK_NODE = re.compile(r"(^|/)lm[/.]layers\.\d+[/.]")


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in avail:
            raise GmSkipError(
                "device cuda requested but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(avail)}); install onnxruntime-gpu or use device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(num_threads: int | None, *, profile_prefix: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if num_threads:
        so.intra_op_num_threads = int(num_threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


@dataclass
class _State:
    past: list
    mask: np.ndarray
    pos: np.ndarray


class OrtBackend(Backend):
    """Runs ``vision.onnx`` + ``decoder.onnx`` of an export directory with ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, onnx_dir, *, model_dir=None, plan_path=None, device: str = "cpu",
                 num_threads: int | None = None, profile_prefix: str | None = None):
        from transformers import AutoProcessor, GenerationConfig

        import onnxruntime as ort

        self.onnx_dir = Path(onnx_dir)
        man = read_manifest(self.onnx_dir)
        if model_dir is not None or plan_path is not None:
            check_matches(man, self.onnx_dir, model_dir=model_dir, plan_path=plan_path)
        self.manifest = man
        proc_dir = self.onnx_dir / "processor"
        src = proc_dir if proc_dir.is_dir() else model_dir
        if src is None:
            raise GmSkipError(f"{self.onnx_dir} has no processor/ and no model_dir was given; "
                              "re-export or pass model_dir")
        processor = AutoProcessor.from_pretrained(src, local_files_only=True)
        gen = GenerationConfig.from_pretrained(self.onnx_dir)
        prov = providers_for(device)
        self.num_threads = num_threads
        sessions = {}
        for part in ("vision", "decoder"):
            so = session_options(num_threads, profile_prefix=profile_prefix and
                                 f"{profile_prefix}_{part}")
            sessions[part] = ort.InferenceSession(str(self.onnx_dir / f"{part}.onnx"), so,
                                                  providers=prov)
        self.vision, self.decoder = sessions["vision"], sessions["decoder"]
        self.embed = np.load(self.onnx_dir / EMBED_FILE, mmap_mode="r")
        dec = man["decoder"]
        self.n_blocks = int(dec["n_blocks"])
        self.kv_shape = (int(dec["n_kv_heads"]), int(dec["head_dim"]))
        self.past_names = G.past_names(self.n_blocks)
        self.out_names = G.DECODER_OUTPUTS + G.present_names(self.n_blocks)
        ident = man["model_identity"]
        from gm_skip_ros.runtime import model_id_of

        plan = man.get("plan_sha256")
        super().__init__(
            processor=processor, generation_config=gen, model_id=model_id_of(ident),
            plan_id=plan[:12] if plan else "full", blocks_active=man["blocks_active"],
            blocks_total=man["blocks_total"], image_token=man["image"]["token_id"],
            device="cuda" if prov[0].startswith("CUDA") else "cpu",
            vision_blocks_active=man.get("vision_blocks_active"),
            vision_blocks_total=man.get("vision_blocks_total"),
        )

    def _vision(self, pixel_values):
        return self.vision.run(G.VISION_OUTPUTS, {"pixel_values": pixel_values})[0]

    def _run_decoder(self, emb, mask, pos, past):
        feed = {"inputs_embeds": emb, "attention_mask": mask, "position_ids": pos}
        feed.update(zip(self.past_names, past))
        out = self.decoder.run(self.out_names, feed)
        return out[0], out[1:]

    def _prefill(self, input_ids, attention_mask, features):
        emb = np.asarray(self.embed[input_ids], dtype=np.float32)
        emb = G.merge_image_features(emb, input_ids, features, self.image_token)
        pos = G.positions_from_mask(attention_mask.copy())
        b = input_ids.shape[0]
        empty = np.zeros((b, self.kv_shape[0], 0, self.kv_shape[1]), np.float32)
        logits, present = self._run_decoder(emb, attention_mask, pos,
                                            [empty] * (2 * self.n_blocks))
        return int(logits[0, -1].argmax()), _State(present, attention_mask, pos[:, -1:] + 1)

    def _decode(self, state: _State, token: int) -> int:
        emb = np.asarray(self.embed[[[token]]], dtype=np.float32)
        state.mask = np.concatenate([state.mask, np.ones((state.mask.shape[0], 1), np.int64)], 1)
        logits, state.past = self._run_decoder(emb, state.mask, state.pos, state.past)
        state.pos = state.pos + 1
        return int(logits[0, -1].argmax())

    def block_time_share(self, image_rgb, prompt, max_new_tokens: int, reps: int = 3) -> dict:
        """Share of ``generate`` time spent in the decoder blocks, from ORT's profiler.

        Method: a second pair of sessions on the same files with ``enable_profiling``; each
        profiled kernel of the decoder graph whose node name lies under a decoder block
        (``lm.layers.N``: both exporters' node names carry the module scope, see
        ``onnx_export._scope_node_names``; ORT's fused nodes keep the first node's name)
        counts as block time. The share is block time over the total of all node events of both graphs,
        scaled by the graphs' share of the wall-clock ``generate`` time measured in the same
        runs (so preprocessing and Python overhead count as non-block time).
        """
        with tempfile.TemporaryDirectory() as tmp:
            prof = OrtBackend(self.onnx_dir, device=self.device, num_threads=self.num_threads,
                              profile_prefix=str(Path(tmp) / "p"))
            totals, graph_ms = [], []
            for _ in range(reps):
                r = prof.generate(image_rgb, prompt, max_new_tokens, ignore_eos=True)
                totals.append(r.timings.total_ms)
                graph_ms.append(r.timings.vision_ms + r.timings.prefill_ms + r.timings.decode_ms)
            block_us = node_us = 0.0
            for f in (prof.vision.end_profiling(), prof.decoder.end_profiling()):
                for ev in json.loads(Path(f).read_text()):
                    if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
                        continue
                    node_us += ev["dur"]
                    if BLOCK_NODE.search(ev["name"]):
                        block_us += ev["dur"]
        t = float(np.median(totals))
        g = float(np.median(graph_ms))
        kernel_share = block_us / node_us if node_us else 0.0
        share = kernel_share * g / t if t else 0.0
        return {"block_ms": share * t, "total_ms": t, "share": share,
                "kernel_block_share": kernel_share,
                "method": "onnxruntime profiler: kernel time of nodes in decoder blocks"}
