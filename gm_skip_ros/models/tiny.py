"""Tiny, randomly initialised models of the supported families, built from configs.

Used by the tests (no downloads) and by ``make demo``'s fallback when no trained model is
at hand. Every model here is a real ``transformers`` class; only the sizes are tiny.

``tiny_model(family)`` returns a model; ``dummy_inputs(family, model)`` returns a dict of
tensors that model's ``forward``/``generate`` accepts (one image per sample).
``build_tiny_vlm("llava", out_dir)`` saves a model *with a processor and tokenizer*
so that it loads through :func:`gm_skip_ros.models.load_vlm` like a downloaded one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

TINY_FAMILIES = (
    "llava",
    "llava_siglip_qwen2",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "idefics3",
    "smolvlm",
    "paligemma",
    "gemma3",
)

VOCAB = 128
_TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def _llama(n_layers: int = 6) -> dict:
    return dict(model_type="llama", num_hidden_layers=n_layers, head_dim=16, **_TEXT)


def tiny_config(family: str, n_layers: int = 6, n_vision_layers: int = 3):
    """Config of a tiny model of ``family`` (see ``TINY_FAMILIES``)."""
    import transformers as T

    if family == "llava":
        return T.LlavaConfig(
            vision_config=dict(
                model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                num_hidden_layers=n_vision_layers, num_attention_heads=4, image_size=32,
                patch_size=8, projection_dim=32,
            ),
            text_config=_llama(n_layers),
            image_token_id=VOCAB - 1, projector_hidden_act="gelu",
            vision_feature_layer=-1, vision_feature_select_strategy="default",
        )
    if family == "llava_siglip_qwen2":
        return T.LlavaConfig(
            vision_config=dict(
                model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                num_hidden_layers=n_vision_layers, num_attention_heads=4, image_size=32,
                patch_size=8,
            ),
            text_config=dict(model_type="qwen2", num_hidden_layers=n_layers, **_TEXT),
            image_token_id=VOCAB - 1, vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        )
    if family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
        text = dict(num_hidden_layers=n_layers, head_dim=16, rope_parameters=rope,
                    bos_token_id=1, eos_token_id=2, **_TEXT)
        if family == "qwen2_vl":
            vision = dict(depth=n_vision_layers, embed_dim=32, hidden_size=64, num_heads=4,
                          mlp_ratio=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
            cls = T.Qwen2VLConfig
        elif family == "qwen2_5_vl":
            vision = dict(depth=n_vision_layers, hidden_size=32, out_hidden_size=64, num_heads=4,
                          intermediate_size=64, patch_size=4, spatial_merge_size=2,
                          temporal_patch_size=2, window_size=8,
                          fullatt_block_indexes=[n_vision_layers - 1])
            cls = T.Qwen2_5_VLConfig
        else:
            rope["mrope_interleaved"] = True
            vision = dict(depth=n_vision_layers, hidden_size=32, out_hidden_size=64, num_heads=4,
                          intermediate_size=64, patch_size=4, spatial_merge_size=2,
                          temporal_patch_size=2, num_position_embeddings=64,
                          deepstack_visual_indexes=[n_vision_layers - 1])
            cls = T.Qwen3VLConfig
        return cls(text_config=text, vision_config=vision, image_token_id=VOCAB - 1,
                   video_token_id=VOCAB - 2, vision_start_token_id=VOCAB - 3,
                   vision_end_token_id=VOCAB - 4)
    if family in ("idefics3", "smolvlm"):
        cls = T.Idefics3Config if family == "idefics3" else T.SmolVLMConfig
        vt = "idefics3_vision" if family == "idefics3" else "smolvlm_vision"
        return cls(
            vision_config=dict(model_type=vt, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=n_vision_layers, num_attention_heads=4,
                               image_size=32, patch_size=8),
            text_config=_llama(n_layers), image_token_id=VOCAB - 1, scale_factor=2,
        )
    if family == "paligemma":
        return T.PaliGemmaConfig(
            vision_config=dict(model_type="siglip_vision_model", hidden_size=32,
                               intermediate_size=64, num_hidden_layers=n_vision_layers,
                               num_attention_heads=4, image_size=32, patch_size=8,
                               projection_dim=64),
            text_config=dict(model_type="gemma", num_hidden_layers=n_layers, head_dim=16,
                             **_TEXT),
            image_token_id=VOCAB - 1, projection_dim=64,
        )
    if family == "gemma3":
        layer_types = ["sliding_attention" if (i + 1) % 3 else "full_attention"
                       for i in range(n_layers)]
        return T.Gemma3Config(
            vision_config=dict(model_type="siglip_vision_model", hidden_size=32,
                               intermediate_size=64, num_hidden_layers=n_vision_layers,
                               num_attention_heads=4, image_size=32, patch_size=8),
            text_config=dict(model_type="gemma3_text", num_hidden_layers=n_layers,
                             head_dim=16, sliding_window=8, layer_types=layer_types,
                             **_TEXT),
            mm_tokens_per_image=4, image_token_id=VOCAB - 1, boi_token_id=VOCAB - 2,
            eoi_token_id=VOCAB - 3,
        )
    raise ValueError(f"no tiny config for family {family!r}; known: {', '.join(TINY_FAMILIES)}")


def tiny_model(family: str, seed: int = 0, n_layers: int = 6, n_vision_layers: int = 3):
    """A randomly initialised tiny model of ``family`` in eval mode (float32, CPU)."""
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    cfg = tiny_config(family, n_layers=n_layers, n_vision_layers=n_vision_layers)
    cfg.tie_word_embeddings = False
    model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.float32)
    return model.eval()


def _n_image_tokens(family: str, cfg) -> int:
    if family.startswith("qwen"):
        return 4  # grid 1x4x4 patches, merged 2x2
    if family in ("idefics3", "smolvlm"):
        v = cfg.vision_config
        return (v.image_size // v.patch_size) ** 2 // cfg.scale_factor**2
    if family == "gemma3":
        return cfg.mm_tokens_per_image
    v = cfg.vision_config
    return (v.image_size // v.patch_size) ** 2


def dummy_inputs(family: str, model, batch: int = 1, text_len: int = 5, seed: int = 0) -> dict:
    """Inputs with one image per sample: ``[image tokens] + text tokens``.

    Text token ids avoid the special ids at the top of the tiny vocabulary.
    """
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    n_img = _n_image_tokens(family, cfg)
    img_id = cfg.image_token_id
    text = torch.randint(3, VOCAB - 8, (batch, text_len), generator=g)
    ids = torch.cat([torch.full((batch, n_img), img_id), text], dim=1)
    out: dict = {}
    if family.startswith("qwen"):
        v = cfg.vision_config
        ids = torch.cat([torch.full((batch, 1), cfg.vision_start_token_id), ids[:, :n_img],
                         torch.full((batch, 1), cfg.vision_end_token_id), text], dim=1)
        grid = torch.tensor([[1, 4, 4]] * batch)
        dim = 3 * v.temporal_patch_size * v.patch_size**2
        out["pixel_values"] = torch.randn(batch * 16, dim, generator=g)
        out["image_grid_thw"] = grid
        out["mm_token_type_ids"] = (ids == img_id).long()
    elif family in ("idefics3", "smolvlm"):
        s = cfg.vision_config.image_size
        out["pixel_values"] = torch.randn(batch, 1, 3, s, s, generator=g)
    else:
        s = cfg.vision_config.image_size
        out["pixel_values"] = torch.randn(batch, 3, s, s, generator=g)
    if family == "gemma3":
        ids = torch.cat([torch.full((batch, 1), cfg.boi_token_id), ids[:, :n_img],
                         torch.full((batch, 1), cfg.eoi_token_id), text], dim=1)
    out["input_ids"] = ids
    out["attention_mask"] = torch.ones_like(ids)
    if family in ("paligemma", "gemma3"):
        tt = (ids == img_id).long() if family == "gemma3" else torch.zeros_like(ids)
        out["token_type_ids"] = tt
    return out


# --------------------------------------------------------------------------------------
# A tiny *loadable* VLM directory (model + tokenizer + processor), Llava family.

_WORDS = (
    "what is the main object describe scene a an on in of road ahead left right centre "
    "center car truck bus pedestrian cyclist traffic light signal stop sign cone red yellow "
    "green blue white black orange grey gray silver day dusk night rain fog and with at"
).split()
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% elif m['role'] == 'assistant' %} ASSISTANT: "
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


def build_word_tokenizer(words=_WORDS, extra_words=()):
    """A word-level fast tokenizer (lower-cased, punctuation split) with Llava specials."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL)}
    for w in ["user", "assistant", ":", "?", ".", ",", *words, *extra_words]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", extra_special_tokens={"image_token": "<image>"},
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_llava_processor(tokenizer, image_size: int, patch_size: int):
    from transformers import CLIPImageProcessor, LlavaProcessor

    ip = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=False, do_resize=True, resample=2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    ip.size = {"height": image_size, "width": image_size}
    return LlavaProcessor(
        image_processor=ip, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )


def build_tiny_vlm(family: str, out_dir: str | os.PathLike, seed: int = 0,
                   n_layers: int = 6, n_vision_layers: int = 3) -> Path:
    """Save a tiny random model of ``family`` with tokenizer + processor to ``out_dir``.

    Only the Llava family gets a processor here (word-level tokenizer, CLIP image
    processor); that is enough for the search/CLI/node tests, which must go through
    ``AutoProcessor`` exactly as a downloaded model does.
    """
    from gm_skip_ros.io import atomic_directory

    if family != "llava":
        raise ValueError("build_tiny_vlm supports family 'llava' only")
    tokenizer = build_word_tokenizer()
    torch.manual_seed(seed)
    cfg = tiny_config("llava", n_layers=n_layers, n_vision_layers=n_vision_layers)
    cfg.text_config.vocab_size = len(tokenizer)
    cfg.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    cfg.text_config.bos_token_id = tokenizer.bos_token_id
    cfg.text_config.eos_token_id = tokenizer.eos_token_id
    cfg.text_config.pad_token_id = tokenizer.pad_token_id
    from transformers import AutoModelForImageTextToText, GenerationConfig

    model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False,
    )
    v = cfg.vision_config
    processor = build_llava_processor(tokenizer, v.image_size, v.patch_size)
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        (tmp / "README.md").write_text(json.dumps({"tiny_random": family, "seed": seed}) + "\n")
    return out_dir
