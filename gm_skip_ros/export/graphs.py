"""The deployable split of a VLM: vision graph, token embedding, decoder graph with KV cache.

One source of truth for *what* is computed at inference time. The torch backend calls
these modules directly; the ONNX exporter traces exactly the same modules; the ONNX
Runtime and TensorRT backends run the exported graphs. So the three backends compute the
same function, stage by stage:

* **vision** (:class:`VisionGraph`): ``pixel_values`` (B, 3, H, W) float32 ->
  ``image_features`` (B * T_img, D) float32, the projected image tokens in order.
* **embedding**: a plain lookup ``embed[input_ids]`` (vocab, D). It is *not* an ONNX graph:
  the exporter saves the matrix as ``embed_tokens.npy`` (computed by running the model's
  own embedding module over every id, so scaled embeddings such as Gemma's come out
  right) and the runtimes index it with numpy. That is faster than a graph call for a
  handful of ids and makes the image-token merge (:func:`merge_image_features`) a single
  boolean-mask assignment.
* **decoder** (:class:`DecoderGraph`): ``inputs_embeds`` (B, S, D), ``attention_mask``
  (B, P + S) int64, ``position_ids`` (B, S) int64 and per block ``past_key_values.i.key``
  / ``.value`` (B, KV, P, Dh) -> ``logits`` (B, 1, V) of the *last* position only and
  ``present.i.key`` / ``.value`` (B, KV, P + S, Dh). An empty past (P = 0) is the prefill.

Families: the Llava family (any vision tower + projector + a rotary decoder with 1-D
positions, e.g. CLIP + Llama, SigLIP + Qwen2). Families whose decoder needs more than
(embeddings, mask, 1-D positions) are refused with :class:`GmSkipError` and the reason
(:data:`UNSUPPORTED_REASONS`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gm_skip_ros.errors import GmSkipError

#: model_type values of the families this split supports.
SUPPORTED_MODEL_TYPES = ("llava",)

#: Why the other families are not exported (yet). Shown to the user on refusal.
UNSUPPORTED_REASONS = {
    "qwen2_vl": "multimodal rotary positions (3 x B x S position ids from image grids) and a "
                "vision tower whose patch layout depends on image_grid_thw at run time",
    "qwen2_5_vl": "same as qwen2_vl (3-D rotary positions, grid-dependent windowed vision)",
    "qwen3_vl": "same as qwen2_vl plus deepstack features injected into decoder blocks",
    "paligemma": "prefix-LM attention (bidirectional over image + prompt, token_type_ids) that "
                 "a causal decoder graph with a 2-D padding mask does not express",
    "gemma3": "bidirectional attention over image tokens and sliding-window layers; the "
              "decoder graph here takes a plain causal padding mask",
    "idefics3": "image splitting into a variable number of sub-images with padding-image "
                "removal (data-dependent shapes) in the vision graph",
    "smolvlm": "same as idefics3",
}


def past_names(n_blocks: int) -> list[str]:
    """Input names of the past KV tensors, in order: key, value per block."""
    return [f"past_key_values.{i}.{kv}" for i in range(n_blocks) for kv in ("key", "value")]


def present_names(n_blocks: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(n_blocks) for kv in ("key", "value")]


VISION_INPUTS = ["pixel_values"]
VISION_OUTPUTS = ["image_features"]
DECODER_INPUTS = ["inputs_embeds", "attention_mask", "position_ids"]
DECODER_OUTPUTS = ["logits"]


@dataclass(frozen=True)
class DecoderShape:
    """Shape facts of the (possibly pruned) decoder, for KV buffers and engine profiles."""

    n_blocks: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int


def model_type(model) -> str:
    return getattr(model.config, "model_type", type(model).__name__)


def check_supported(model) -> None:
    """Raise :class:`GmSkipError` unless the model's family can be split/exported."""
    mt = model_type(model)
    if mt in SUPPORTED_MODEL_TYPES:
        return
    why = UNSUPPORTED_REASONS.get(mt, "not a known vision-language family")
    raise GmSkipError(
        f"model type {mt!r} cannot be exported/run by the split runtime ({why}); "
        f"supported: {', '.join(SUPPORTED_MODEL_TYPES)} (vision tower + projector + rotary "
        "decoder such as CLIP+Llama or SigLIP+Qwen2)"
    )


def _text_config(model):
    return model.config.get_text_config(decoder=True)


def decoder_shape(model) -> DecoderShape:
    tc = _text_config(model)
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    n_kv = getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads
    return DecoderShape(
        n_blocks=len(language_model(model).layers), n_kv_heads=int(n_kv),
        head_dim=int(head_dim), hidden_size=int(tc.hidden_size), vocab_size=int(tc.vocab_size),
    )


def language_model(model) -> nn.Module:
    """The text decoder body (embeddings, blocks, final norm) of a supported model."""
    return model.model.language_model


def image_token_id(model) -> int:
    cfg = model.config
    tid = getattr(cfg, "image_token_id", None)
    if tid is None:
        tid = getattr(cfg, "image_token_index", None)
    if tid is None:
        raise GmSkipError(f"model config has no image_token_id; cannot place image features "
                          f"({model_type(model)})")
    return int(tid)


class VisionGraph(nn.Module):
    """pixel_values (B, 3, H, W) -> image_features (B * T_img, D): tower + projector."""

    def __init__(self, model):
        super().__init__()
        check_supported(model)
        self.tower = model.model.vision_tower
        self.projector = model.model.multi_modal_projector
        cfg = model.config
        self.feature_layer = cfg.vision_feature_layer
        self.strategy = cfg.vision_feature_select_strategy

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.tower(pixel_values, output_hidden_states=True, return_dict=True)
        layers = self.feature_layer if isinstance(self.feature_layer, (list, tuple)) \
            else [self.feature_layer]
        feats = [out.hidden_states[i] for i in layers]
        if self.strategy == "default":  # drop the CLS token
            feats = [f[:, 1:] for f in feats]
        x = torch.cat(feats, dim=-1) if len(feats) > 1 else feats[0]
        x = self.projector(x)
        return x.reshape(-1, x.shape[-1])


class DecoderGraph(nn.Module):
    """Language decoder + LM head with an explicit KV cache, last-position logits."""

    def __init__(self, model):
        super().__init__()
        check_supported(model)
        self.lm = language_model(model)
        self.head = model.lm_head
        self.n_blocks = len(self.lm.layers)

    def step(self, inputs_embeds, attention_mask, position_ids, cache):
        """Run one prefill/decode step, updating ``cache`` (a transformers Cache) in place.

        Returns last-position logits (B, 1, V).
        """
        out = self.lm(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask,
            position_ids=position_ids, cache=cache, use_cache=True, return_dict=True,
        )
        return self.head(out.last_hidden_state[:, -1:, :])

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        from transformers.cache_utils import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.n_blocks)]
        cache = DynamicCache(ddp_cache_data=pairs)
        logits = self.step(inputs_embeds, attention_mask, position_ids, cache)
        present = []
        for layer in cache.layers:
            present += [layer.keys, layer.values]
        return (logits, *present)


def embedding_matrix(model) -> torch.Tensor:
    """(vocab, D) float32: the embedding module's output for every id (scales included)."""
    emb = model.get_input_embeddings()
    with torch.no_grad():
        ids = torch.arange(emb.num_embeddings, device=emb.weight.device)
        return emb(ids).float().cpu()


def merge_image_features(embeds, input_ids, features, image_token):
    """Put ``features`` (N, D) in order into ``embeds`` (B, S, D) where ``input_ids`` is the
    image token; works on torch tensors and numpy arrays alike. Returns ``embeds``.
    """
    mask = input_ids == image_token
    n = int(mask.sum())
    if n != features.shape[0]:
        raise GmSkipError(
            f"prompt has {n} image tokens but the vision graph produced {features.shape[0]} "
            "image features; the processor and the model disagree (image size or "
            "image_seq_length): re-save the processor with the model"
        )
    embeds[mask] = features.astype(embeds.dtype) if hasattr(features, "astype") \
        else features.to(embeds.dtype)
    return embeds


def positions_from_mask(attention_mask):
    """Rotary positions (B, S) from a left-padded mask: cumsum - 1, pads at 0 (numpy/torch)."""
    pos = attention_mask.cumsum(-1) - 1
    pos[attention_mask == 0] = 0
    return pos
