"""PyTorch backend: the split modules of :mod:`gm_skip_ros.export.graphs` run eagerly.

It runs the same loop as the ONNX Runtime and TensorRT backends (not ``generate()``), so
their timings compare stage by stage; a test checks that its text equals greedy
``model.generate()``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gm_skip_ros.export.graphs import (
    DecoderGraph,
    VisionGraph,
    check_supported,
    image_token_id,
    merge_image_features,
    positions_from_mask,
)
from gm_skip_ros.runtime.base import Backend


@dataclass
class _State:
    cache: object
    mask: torch.Tensor
    pos: torch.Tensor


class TorchBackend(Backend):
    """A loaded (pruned) :class:`~gm_skip_ros.models.LoadedVLM` run with the shared loop."""

    name = "torch"

    def __init__(self, vlm, *, model_id: str, plan_id: str, blocks_total: int,
                 vision_blocks_total: int | None = None):
        model = vlm.model
        check_supported(model)
        self.vlm = vlm
        self.dev = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.vision = VisionGraph(model).eval()
        self.decoder = DecoderGraph(model).eval()
        self.embed = model.get_input_embeddings()
        super().__init__(
            processor=vlm.processor, generation_config=model.generation_config,
            model_id=model_id, plan_id=plan_id, blocks_active=len(vlm.decoder_blocks),
            blocks_total=blocks_total, image_token=image_token_id(model),
            device=str(self.dev), vision_blocks_active=vlm.num_vision_blocks,
            vision_blocks_total=vision_blocks_total,
        )

    def _sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    @torch.inference_mode()
    def _vision(self, pixel_values: np.ndarray):
        pv = torch.from_numpy(pixel_values).to(self.dev, self.dtype)
        feats = self.vision(pv)
        self._sync()
        return feats

    @torch.inference_mode()
    def _prefill(self, input_ids, attention_mask, features):
        from transformers.cache_utils import DynamicCache

        ids = torch.from_numpy(input_ids).to(self.dev)
        mask = torch.from_numpy(attention_mask).to(self.dev)
        emb = merge_image_features(self.embed(ids), ids, features, self.image_token)
        pos = positions_from_mask(mask)
        cache = DynamicCache()
        logits = self.decoder.step(emb, mask, pos, cache)
        tok = int(logits[0, -1].argmax())
        return tok, _State(cache=cache, mask=mask, pos=pos[:, -1:] + 1)

    @torch.inference_mode()
    def _decode(self, state: _State, token: int) -> int:
        ids = torch.tensor([[token]], device=self.dev)
        state.mask = torch.cat([state.mask, torch.ones_like(state.mask[:, :1])], dim=1)
        logits = self.decoder.step(self.embed(ids), state.mask, state.pos, state.cache)
        state.pos = state.pos + 1
        return int(logits[0, -1].argmax())

    def block_time_share(self, image_rgb, prompt, max_new_tokens: int, reps: int = 3) -> dict:
        """Measure the share of ``generate`` time spent inside the decoder blocks.

        Method: forward pre-/post-hooks on every decoder block record ``perf_counter``
        around each block call (synchronising CUDA first); ``reps`` generate calls are
        timed as a whole at the same time. Returns ``{"block_ms", "total_ms", "share"}``
        (medians). Hooks are removed afterwards; timed benchmark runs never carry them.
        """
        import time

        spent = [0.0]
        starts: dict[int, float] = {}

        def pre(mod, args):
            self._sync()
            starts[id(mod)] = time.perf_counter()

        def post(mod, args, out):
            self._sync()
            spent[0] += time.perf_counter() - starts.pop(id(mod))

        handles = []
        for blk in self.vlm.decoder_blocks:
            handles.append(blk.register_forward_pre_hook(pre))
            handles.append(blk.register_forward_hook(post))
        blocks, totals = [], []
        try:
            for _ in range(reps):
                spent[0] = 0.0
                r = self.generate(image_rgb, prompt, max_new_tokens, ignore_eos=True)
                blocks.append(spent[0] * 1e3)
                totals.append(r.timings.total_ms)
        finally:
            for h in handles:
                h.remove()
        b, t = float(np.median(blocks)), float(np.median(totals))
        return {"block_ms": b, "total_ms": t, "share": b / t if t else 0.0,
                "method": "torch forward hooks around each decoder block"}
