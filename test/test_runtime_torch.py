"""The shared generation loop and the torch backend, on a tiny Llava built from config."""
import numpy as np
import pytest
import torch

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.models import build_inputs, load_vlm
from gm_skip_ros.models.tiny import build_tiny_vlm
from gm_skip_ros.runtime import create_backend
from gm_skip_ros.runtime.base import StageTimings, stop_token_ids

PROMPT = "What is the main object?"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return build_tiny_vlm("llava", tmp_path_factory.mktemp("m") / "tiny_llava", seed=0)


def _sharpen(vlm, seed=1):
    """Re-draw the weights with a larger spread so greedy output is not one repeated token."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vlm.model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.35)
    return vlm


def _image(seed=0, h=48, w=64):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_torch_backend_matches_generate(tiny_dir):
    vlm = _sharpen(load_vlm(tiny_dir))
    backend = create_backend("torch", tiny_dir, vlm=vlm)
    for seed in range(3):
        img = _image(seed)
        inputs, n_prompt = build_inputs(vlm.processor, img, PROMPT)
        with torch.no_grad():
            ref = vlm.model.generate(**inputs, max_new_tokens=10, do_sample=False)
        ref_tokens = ref[0, n_prompt:].tolist()
        res = backend.generate(img, PROMPT, max_new_tokens=10)
        assert list(res.tokens) == ref_tokens
        assert len(set(ref_tokens)) > 1  # a meaningful comparison, not one repeated id
        expected = vlm.processor.tokenizer.decode(
            [t for t in ref_tokens if t not in backend.stop_ids], skip_special_tokens=True)
        assert res.text == expected.strip()


def test_backend_attributes_and_timings(tiny_dir):
    backend = create_backend("torch", tiny_dir)
    assert backend.name == "torch"
    assert backend.plan_id == "full"
    assert backend.blocks_active == backend.blocks_total == 6
    assert backend.model_id.startswith("tiny_llava@")
    res = backend.generate(_image(), PROMPT, max_new_tokens=5, ignore_eos=True)
    t = res.timings
    assert len(res.tokens) == 5 and t.new_tokens == 5 and t.decode_steps == 4
    assert t.prompt_tokens > 16  # 16 image tokens + the text
    parts = t.preprocess_ms + t.vision_ms + t.prefill_ms + t.decode_ms
    assert all(x > 0 for x in (t.preprocess_ms, t.vision_ms, t.prefill_ms, t.decode_ms))
    assert parts <= t.total_ms
    assert t.per_token_ms == pytest.approx(t.decode_ms / 4)


def test_stop_token_ends_generation(tiny_dir):
    vlm = _sharpen(load_vlm(tiny_dir))
    backend = create_backend("torch", tiny_dir, vlm=vlm)
    first = backend.generate(_image(), PROMPT, max_new_tokens=6).tokens
    # declare the third generated token a stop token: generation stops there, text drops it
    backend.stop_ids = frozenset({first[2]})
    res = backend.generate(_image(), PROMPT, max_new_tokens=6)
    assert res.tokens == first[: first.index(first[2]) + 1]
    assert res.tokens[-1] == first[2]
    tok = vlm.processor.tokenizer
    assert res.text == tok.decode(list(res.tokens[:-1]), skip_special_tokens=True).strip()


def test_stop_token_ids_from_config_and_tokenizer(tiny_dir):
    vlm = load_vlm(tiny_dir)
    tok = vlm.processor.tokenizer

    class Cfg:
        eos_token_id = [7, 9]

    ids = stop_token_ids(Cfg(), tok)
    assert {7, 9, tok.eos_token_id} <= ids


def test_stage_timings_no_decode():
    t = StageTimings(decode_ms=0.0, new_tokens=1)
    assert t.decode_steps == 0 and t.per_token_ms == 0.0
    assert t.as_dict()["per_token_ms"] == 0.0


def test_unknown_backend_and_precision(tiny_dir):
    with pytest.raises(GmSkipError, match="onnxruntime"):
        create_backend("tflite", tiny_dir)
    with pytest.raises(GmSkipError, match="fp16"):
        create_backend("torch", tiny_dir, precision="fp8")
