"""Block discovery, reversible mask == physical removal, generate after removal, save/reload,
for a tiny random model of every supported family (real transformers classes)."""
import pytest
import torch
from transformers import AutoModelForImageTextToText

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.models import SkipMask, family_for_model_type, remove_blocks
from gm_skip_ros.models.families import FAMILIES, resolve_blocks
from gm_skip_ros.models.tiny import TINY_FAMILIES, dummy_inputs, tiny_model

N_DEC, N_VIS = 6, 3
# vision blocks to skip per family: deepstack taps (qwen3_vl) need a distinct block before them
VISION_RM = {"qwen3_vl": [0]}


def _suppress(model):
    cfg = model.config
    ids = {getattr(cfg, k, None) for k in ("image_token_id", "video_token_id", "boi_token_id",
                                            "eoi_token_id", "vision_start_token_id",
                                            "vision_end_token_id")}
    return sorted(i for i in ids if i is not None)


def _generate(model, x, n=6):
    return model.generate(**x, max_new_tokens=n, do_sample=False, suppress_tokens=_suppress(model))


def _extend(fam, x, seq):
    """Inputs for a no-cache forward over the prompt followed by generated tokens."""
    out = dict(x)
    extra = seq.shape[1] - x["input_ids"].shape[1]
    out["input_ids"] = seq
    out["attention_mask"] = torch.ones_like(seq)
    for key in ("token_type_ids", "mm_token_type_ids"):
        if key in x:
            # PaliGemma: generated tokens are the causal suffix (type 1), the prompt the prefix
            fill = 1 if (fam == "paligemma" and key == "token_type_ids") else 0
            tail = torch.full((seq.shape[0], extra), fill, dtype=torch.long)
            out[key] = torch.cat([x[key], tail], 1)
    return out


def test_every_listed_family_has_a_tiny_model():
    covered = {family_for_model_type(tiny_model(f).config.model_type).name for f in TINY_FAMILIES}
    assert covered == {f.name for f in FAMILIES}


@pytest.mark.parametrize("fam", TINY_FAMILIES)
def test_block_discovery(fam):
    model = tiny_model(fam, n_layers=N_DEC, n_vision_layers=N_VIS)
    family = family_for_model_type(model.config.model_type)
    assert len(resolve_blocks(model, family.decoder_path, "decoder")) == N_DEC
    assert len(resolve_blocks(model, family.vision_path, "vision")) == N_VIS


@pytest.mark.parametrize("fam", TINY_FAMILIES)
def test_mask_equals_removal_and_generate_after_removal(fam, tmp_path):
    model = tiny_model(fam, n_layers=N_DEC, n_vision_layers=N_VIS)
    family = family_for_model_type(model.config.model_type)
    x = dummy_inputs(fam, model)
    dec_rm, vis_rm = [2, 4], VISION_RM.get(fam, [1])
    mask = SkipMask(model, family)
    with torch.no_grad():
        full = model(**x).logits
        with mask.skipping(decoder=dec_rm, vision=vis_rm):
            masked = model(**x).logits
            masked_gen = _generate(model, x)
        restored = model(**x).logits
        assert torch.equal(full, restored), "mask did not restore the model"
        assert not torch.allclose(full, masked), "skipping blocks changed nothing"

        remove_blocks(model, family, decoder=dec_rm, vision=vis_rm)
        assert len(resolve_blocks(model, family.decoder_path, "decoder")) == N_DEC - 2
        removed = model(**x).logits
        torch.testing.assert_close(masked, removed, rtol=0, atol=1e-6)

        # cached greedy generate == greedy of a no-cache forward over the same sequence
        gen = _generate(model, x)
        assert torch.equal(gen, masked_gen)
        p = x["input_ids"].shape[1]
        nocache = model(**_extend(fam, x, gen), use_cache=False).logits
        nocache[..., _suppress(model)] = -float("inf")
        assert torch.equal(nocache[0, p - 1:-1].argmax(-1), gen[0, p:])

    text_cfg = model.config.text_config
    assert text_cfg.num_hidden_layers == N_DEC - 2
    if getattr(text_cfg, "layer_types", None) is not None:
        assert len(text_cfg.layer_types) == N_DEC - 2
    layers = resolve_blocks(model, family.decoder_path, "decoder")
    assert [blk.self_attn.layer_idx for blk in layers] == list(range(N_DEC - 2))

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**x).logits, removed, rtol=0, atol=1e-6)
        assert torch.equal(_generate(reloaded, x), gen)


def test_gemma3_layer_types_follow_the_removed_blocks():
    model = tiny_model("gemma3", n_layers=6)
    family = family_for_model_type("gemma3")
    before = list(model.config.text_config.layer_types)
    remove_blocks(model, family, decoder=[0, 2])
    assert model.config.text_config.layer_types == [before[i] for i in (1, 3, 4, 5)]


def test_vision_index_lists_are_remapped():
    m = tiny_model("qwen2_5_vl", n_vision_layers=4)
    m.config.vision_config.fullatt_block_indexes = [1, 3]
    m.model.visual.fullatt_block_indexes = [1, 3]
    remove_blocks(m, family_for_model_type("qwen2_5_vl"), vision=[1])
    assert m.config.vision_config.fullatt_block_indexes == [2]
    assert m.model.visual.fullatt_block_indexes == [2]
    assert m.config.vision_config.depth == 3

    q3 = tiny_model("qwen3_vl", n_vision_layers=4)
    q3.config.vision_config.deepstack_visual_indexes = [1, 3]
    q3.model.visual.deepstack_visual_indexes = [1, 3]
    remove_blocks(q3, family_for_model_type("qwen3_vl"), vision=[3])
    # block 3's output is now block 2's output, which is new index 2
    assert q3.model.visual.deepstack_visual_indexes == [1, 2]


def test_llava_vision_feature_layer_is_remapped():
    m = tiny_model("llava", n_vision_layers=4)
    m.config.vision_feature_layer = -2  # hidden state after block 2 (of 0..3)
    x = dummy_inputs("llava", m)
    fam = family_for_model_type("llava")
    with torch.no_grad():
        before = m(**x).logits
        remove_blocks(m, fam, vision=[3])  # dead compute for layer -2: output unchanged
        assert m.config.vision_feature_layer == -1
        torch.testing.assert_close(m(**x).logits, before, rtol=0, atol=1e-6)


def test_bad_indices_are_refused():
    m = tiny_model("llava", n_layers=4)
    fam = family_for_model_type("llava")
    with pytest.raises(GmSkipError, match="out of range"):
        remove_blocks(m, fam, decoder=[4])
    with pytest.raises(GmSkipError, match="keep at least one"):
        remove_blocks(m, fam, decoder=[0, 1, 2, 3])
    mask = SkipMask(m, fam)
    with pytest.raises(GmSkipError):
        mask.set(decoder=[9])
    assert mask.skipped == ((), ())
    assert len(resolve_blocks(m, fam.decoder_path, "decoder")) == 4


def _layout(m, fam):
    dec = resolve_blocks(m, fam.decoder_path, "decoder")
    vis = resolve_blocks(m, fam.vision_path, "vision")
    idx = [getattr(getattr(b, "self_attn", None), "layer_idx", None) for b in dec]
    return (len(dec), len(vis), [id(b) for b in dec], [id(b) for b in vis], idx,
            m.config.text_config.num_hidden_layers,
            getattr(m.config.vision_config, fam.vision_count_key))


def test_invalid_vision_list_leaves_the_model_unchanged():
    """A valid decoder list with an invalid vision list must fail before any change."""
    m = tiny_model("llava", n_layers=4, n_vision_layers=4)
    fam = family_for_model_type("llava")
    before = _layout(m, fam)
    feature_layer = m.config.vision_feature_layer
    assert before[0] == 4 and before[5] == 4
    with pytest.raises(GmSkipError, match="out of range"):
        remove_blocks(m, fam, decoder=[1], vision=[7])
    assert _layout(m, fam) == before
    assert m.config.vision_feature_layer == feature_layer
    remove_blocks(m, fam, decoder=[1], vision=[])  # the model is still whole and usable
    assert _layout(m, fam)[0] == 3 and m.config.text_config.num_hidden_layers == 3

    # a deepstack tap with no block left before it: refused after the decoder list passed
    q3 = tiny_model("qwen3_vl", n_layers=4, n_vision_layers=4)
    q3.config.vision_config.deepstack_visual_indexes = [0, 3]
    q3.model.visual.deepstack_visual_indexes = [0, 3]
    fam3 = family_for_model_type("qwen3_vl")
    before = _layout(q3, fam3)
    with pytest.raises(GmSkipError, match="deepstack_visual_indexes"):
        remove_blocks(q3, fam3, decoder=[2], vision=[0])
    assert _layout(q3, fam3) == before
    assert q3.config.vision_config.deepstack_visual_indexes == [0, 3]
    assert q3.model.visual.deepstack_visual_indexes == [0, 3]


def test_unknown_architecture_names_the_families_and_the_manual_path():
    with pytest.raises(GmSkipError) as err:
        family_for_model_type("blip_2")
    msg = str(err.value)
    assert "llava" in msg and "qwen2_vl" in msg and "--decoder-path" in msg
