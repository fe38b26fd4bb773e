"""TensorRT backend: the vision and decoder engines run through the shared loop.

Written against the documented TensorRT 10 Python API (``trt.Runtime``,
``deserialize_cuda_engine``, ``IExecutionContext.set_input_shape`` /
``set_tensor_address`` / ``execute_async_v3``) with torch CUDA tensors as buffers.
UNTESTED: TensorRT cannot be installed in the workplace this was written in. When
``import tensorrt`` fails or there is no GPU, choosing this backend raises GmSkipError
naming onnxruntime as the alternative.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gm_skip_ros.export import graphs as G
from gm_skip_ros.export.onnx_export import EMBED_FILE, check_matches, read_manifest
from gm_skip_ros.runtime.base import Backend


def require_tensorrt() -> None:
    """GmSkipError (naming onnxruntime) unless tensorrt imports and a GPU is visible."""
    from gm_skip_ros.export.tensorrt_builder import gpu_name, import_tensorrt

    import_tensorrt()
    gpu_name()


class _Engine:
    """One deserialized engine with its execution context; runs dicts of CUDA tensors."""

    def __init__(self, trt, runtime, data: bytes, stream):
        import torch

        self.trt, self.torch = trt, torch
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            from gm_skip_ros.errors import GmSkipError

            raise GmSkipError("TensorRT could not deserialize a cached engine (built by another "
                              "TensorRT version?); run gm-skip build-engine again")
        self.context = self.engine.create_execution_context()
        self.stream = stream
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names
                        if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def run(self, feed: dict) -> dict:
        torch = self.torch
        for name, t in feed.items():
            t = t.contiguous()
            feed[name] = t
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        out = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.float16 if self.engine.get_tensor_dtype(name) == self.trt.DataType.HALF \
                else torch.float32
            out[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, out[name].data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return out


@dataclass
class _State:
    past: list
    mask: object
    pos: object


class TensorRTBackend(Backend):
    """Engines from the cache (built on first use), the embedding lookup on the GPU."""

    name = "tensorrt"

    def __init__(self, onnx_dir, *, model_dir=None, plan_path=None, device: str = "cuda",
                 precision: str = "fp16", engine_cache_dir=None):
        import torch
        from transformers import AutoProcessor, GenerationConfig

        from gm_skip_ros.export.engine_cache import load_valid
        from gm_skip_ros.export.tensorrt_builder import build_engines, import_tensorrt
        from gm_skip_ros.runtime import default_cache_dir, model_id_of

        trt = import_tensorrt()
        self.onnx_dir = Path(onnx_dir)
        man = read_manifest(self.onnx_dir)
        if model_dir is not None or plan_path is not None:
            check_matches(man, self.onnx_dir, model_dir=model_dir, plan_path=plan_path)
        cache = Path(engine_cache_dir or default_cache_dir() / "engines")
        built = build_engines(self.onnx_dir, cache, precision)
        from gm_skip_ros.export.tensorrt_builder import engine_keys, gpu_name

        keys = engine_keys(self.onnx_dir, precision, tensorrt_version=trt.__version__,
                           gpu=gpu_name())
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.stream = torch.cuda.Stream()
        self.vision = _Engine(trt, runtime, load_valid(built["vision.onnx"][0],
                                                       keys["vision.onnx"]), self.stream)
        self.decoder = _Engine(trt, runtime, load_valid(built["decoder.onnx"][0],
                                                        keys["decoder.onnx"]), self.stream)
        self.embed = torch.from_numpy(np.load(self.onnx_dir / EMBED_FILE)).cuda()
        dec = man["decoder"]
        self.n_blocks = int(dec["n_blocks"])
        self.kv_shape = (int(dec["n_kv_heads"]), int(dec["head_dim"]))
        self.past_names = G.past_names(self.n_blocks)
        self.present_names = G.present_names(self.n_blocks)
        proc_dir = self.onnx_dir / "processor"
        processor = AutoProcessor.from_pretrained(proc_dir if proc_dir.is_dir() else model_dir,
                                                  local_files_only=True)
        plan = man.get("plan_sha256")
        super().__init__(
            processor=processor, generation_config=GenerationConfig.from_pretrained(self.onnx_dir),
            model_id=model_id_of(man["model_identity"]), plan_id=plan[:12] if plan else "full",
            blocks_active=man["blocks_active"], blocks_total=man["blocks_total"],
            image_token=man["image"]["token_id"], device="cuda",
            vision_blocks_active=man.get("vision_blocks_active"),
            vision_blocks_total=man.get("vision_blocks_total"),
        )

    def _vision(self, pixel_values):
        import torch

        pv = torch.from_numpy(pixel_values).cuda()
        return self.vision.run({"pixel_values": pv})["image_features"]

    def _decoder(self, emb, mask, pos, past):
        feed = {"inputs_embeds": emb, "attention_mask": mask, "position_ids": pos}
        feed.update(zip(self.past_names, past))
        out = self.decoder.run(feed)
        return out["logits"], [out[n] for n in self.present_names]

    def _prefill(self, input_ids, attention_mask, features):
        import torch

        ids = torch.from_numpy(input_ids).cuda()
        mask = torch.from_numpy(attention_mask).cuda()
        emb = G.merge_image_features(self.embed[ids], ids, features.float(), self.image_token)
        pos = G.positions_from_mask(mask.clone())
        empty = torch.zeros((ids.shape[0], *self.kv_shape[:1], 0, self.kv_shape[1]),
                            device="cuda")
        logits, past = self._decoder(emb, mask, pos, [empty] * (2 * self.n_blocks))
        return int(logits[0, -1].argmax()), _State(past, mask, pos[:, -1:] + 1)

    def _decode(self, state, token):
        import torch

        emb = self.embed[torch.tensor([[token]], device="cuda")]
        state.mask = torch.cat([state.mask, torch.ones_like(state.mask[:, :1])], 1)
        logits, state.past = self._decoder(emb, state.mask, state.pos, state.past)
        state.pos = state.pos + 1
        return int(logits[0, -1].argmax())

    def block_time_share(self, image_rgb, prompt, max_new_tokens: int, reps: int = 3) -> dict:
        from gm_skip_ros.errors import GmSkipError

        raise GmSkipError("block-time share is not measured for TensorRT engines (layer "
                          "profiling is not wired up); bench the same plan on onnxruntime")
