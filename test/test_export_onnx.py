"""ONNX export of the split model: parity with PyTorch, manifest, validation, refusals."""
import numpy as np
import pytest
import torch

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.export import graphs as G
from gm_skip_ros.export.onnx_export import check_matches, export_vlm, read_manifest
from gm_skip_ros.models.families import family_for_model_type
from gm_skip_ros.models.loading import LoadedVLM
from gm_skip_ros.models.tiny import dummy_inputs, tiny_model

from runtime_support import write_plan

ort = pytest.importorskip("onnxruntime")
TOL = 1e-4
STEPS = 8


def _vlm(family, tmp_path, seed=0):
    """A LoadedVLM around a tiny model of ``family`` with weights spread enough that greedy
    decoding does not collapse to one repeated token."""
    torch.set_num_threads(1)
    model = tiny_model(family, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    fam = family_for_model_type(model.config.model_type)
    ident = {"path": str(tmp_path / family), "architecture": type(model).__name__,
             "config_sha256": "c" * 64, "weights_sha256": "w" * 64,
             "num_decoder_blocks": 6, "num_vision_blocks": 3}
    return LoadedVLM(model=model, processor=None, family=fam, model_dir=tmp_path,
                     device=torch.device("cpu"), original_identity=ident)


def _torch_run(model, inputs, steps):
    vision, decoder = G.VisionGraph(model).eval(), G.DecoderGraph(model).eval()
    from transformers.cache_utils import DynamicCache

    with torch.no_grad():
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        feats = vision(inputs["pixel_values"])
        emb = G.merge_image_features(model.get_input_embeddings()(ids), ids, feats,
                                     G.image_token_id(model))
        pos = G.positions_from_mask(mask.clone())
        cache = DynamicCache()
        logits = [decoder.step(emb, mask, pos, cache)[:, -1]]
        tokens = [logits[-1].argmax(-1)]
        pos = pos[:, -1:] + 1
        for _ in range(steps - 1):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            e = model.get_input_embeddings()(tokens[-1][:, None])
            logits.append(decoder.step(e, mask, pos, cache)[:, -1])
            tokens.append(logits[-1].argmax(-1))
            pos = pos + 1
    return [x.numpy() for x in logits], torch.stack(tokens, 1).numpy(), feats.numpy()


def _ort_run(onnx_dir, inputs, steps):
    man = read_manifest(onnx_dir)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    vis = ort.InferenceSession(str(onnx_dir / "vision.onnx"), so, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(onnx_dir / "decoder.onnx"), so, providers=["CPUExecutionProvider"])
    embed = np.load(onnx_dir / "embed_tokens.npy")
    n, (kv, hd) = man["decoder"]["n_blocks"], (man["decoder"]["n_kv_heads"], man["decoder"]["head_dim"])
    ids, mask = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()
    feats = vis.run(None, {"pixel_values": inputs["pixel_values"].numpy()})[0]
    emb = G.merge_image_features(embed[ids].copy(), ids, feats, man["image"]["token_id"])
    pos = G.positions_from_mask(mask.copy())
    past = [np.zeros((ids.shape[0], kv, 0, hd), np.float32)] * (2 * n)
    names = G.past_names(n)
    logits, tokens = [], []
    for i in range(steps):
        out = dec.run(None, {"inputs_embeds": emb, "attention_mask": mask, "position_ids": pos,
                             **dict(zip(names, past))})
        logits.append(out[0][:, -1])
        tokens.append(out[0][:, -1].argmax(-1))
        past = out[1:]
        emb = embed[tokens[-1][:, None]]
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], 1)
        pos = pos[:, -1:] + 1
    return logits, np.stack(tokens, 1), feats


def _left_pad(inputs, pad=3):
    """Batch of 2: the sample as is, and the same sample left-padded by ``pad``."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    ids2 = torch.cat([torch.zeros(1, pad, dtype=ids.dtype), ids], 1)
    mask2 = torch.cat([torch.zeros(1, pad, dtype=mask.dtype), mask], 1)
    out = dict(inputs)
    out["input_ids"] = torch.cat([torch.cat([ids[:, :1].repeat(1, pad), ids], 1), ids2], 0)
    out["attention_mask"] = torch.cat([torch.cat([torch.ones(1, pad, dtype=mask.dtype), mask], 1),
                                       mask2], 0)
    out["input_ids"][0, :pad] = 3  # plain text tokens in front of the first sample
    out["pixel_values"] = inputs["pixel_values"].repeat(2, 1, 1, 1)
    return out


def _parity(family, exporter, tmp_path):
    vlm = _vlm(family, tmp_path)
    out = export_vlm(vlm, tmp_path / f"onnx_{family}", exporter=exporter)
    man = read_manifest(out)
    assert man["graphs"]["decoder.onnx"]["exporter"] in ("dynamo", "torchscript")
    inputs = dummy_inputs(family, vlm.model, text_len=6)
    t_logits, t_tokens, t_feats = _torch_run(vlm.model, inputs, STEPS)
    o_logits, o_tokens, o_feats = _ort_run(out, inputs, STEPS)
    assert np.abs(t_feats - o_feats).max() < TOL
    for a, b in zip(t_logits, o_logits):
        assert np.abs(a - b).max() < TOL
    np.testing.assert_array_equal(t_tokens, o_tokens)
    assert len(set(t_tokens[0].tolist())) > 1
    # the split torch modules compute what the HF model's own greedy generate() computes
    with torch.no_grad():
        ref = vlm.model.generate(**inputs, max_new_tokens=STEPS, do_sample=False)
    np.testing.assert_array_equal(ref[:, inputs["input_ids"].shape[1]:].numpy(), t_tokens)
    # batch 2 with left padding: both rows give the unpadded sample's logits
    b2 = _left_pad(inputs)
    o2_logits, _, _ = _ort_run(out, b2, 3)
    t2_logits, _, _ = _torch_run(vlm.model, b2, 3)
    for a, b in zip(t2_logits, o2_logits):
        assert np.abs(a - b).max() < TOL
    assert np.abs(o2_logits[0][1] - o_logits[0][0]).max() < TOL
    return man


@pytest.mark.parametrize("family", ["llava", "llava_siglip_qwen2"])
def test_parity_torchscript(family, tmp_path):
    man = _parity(family, "torchscript", tmp_path)
    assert man["opset"] == 18
    assert man["graphs"]["decoder.onnx"]["exporter"] == "torchscript"
    dec = man["graphs"]["decoder.onnx"]
    n = man["decoder"]["n_blocks"]
    assert dec["inputs"] == G.DECODER_INPUTS + G.past_names(n)
    assert dec["outputs"] == G.DECODER_OUTPUTS + G.present_names(n)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava", "llava_siglip_qwen2"])
def test_parity_dynamo(family, tmp_path):
    man = _parity(family, "dynamo", tmp_path)
    assert man["graphs"]["decoder.onnx"]["exporter"] == "dynamo"


def test_manifest_and_validation(tmp_path):
    vlm = _vlm("llava", tmp_path)
    plan = write_plan(tmp_path / "plan.json", vlm.identity(), removed=[])
    out = export_vlm(vlm, tmp_path / "onnx", exporter="torchscript", plan_path=plan)
    man = read_manifest(out)
    assert set(man["files"]) >= {"vision.onnx", "decoder.onnx", "embed_tokens.npy",
                                 "generation_config.json"}
    assert man["model_identity"]["weights_sha256"] == "w" * 64
    assert len(man["plan_sha256"]) == 64
    assert man["blocks_active"] == 6 and man["blocks_total"] == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".onnx")]  # no temp left
    check_matches(man, out, plan_path=plan)
    with pytest.raises(GmSkipError, match="plan"):
        check_matches(man, out, plan_path=None)
    other = write_plan(tmp_path / "other.json", vlm.identity(), removed=[1])
    with pytest.raises(GmSkipError, match="re-export"):
        check_matches(man, out, plan_path=other)
    # corruption and partial directories are detected
    dec = out / "decoder.onnx"
    data = bytearray(dec.read_bytes())
    data[-10] ^= 0xFF
    dec.write_bytes(bytes(data))
    with pytest.raises(GmSkipError, match="sha256"):
        read_manifest(out)
    dec.unlink()
    with pytest.raises(GmSkipError, match="missing"):
        read_manifest(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(GmSkipError, match="corrupt"):
        read_manifest(out)
    with pytest.raises(GmSkipError, match="gm-skip export"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("family", ["qwen2_vl", "paligemma", "gemma3", "idefics3"])
def test_unsupported_family_refused(family, tmp_path):
    vlm = _vlm(family, tmp_path)
    out = tmp_path / "onnx"
    with pytest.raises(GmSkipError, match="supported: llava"):
        export_vlm(vlm, out, exporter="torchscript")
    assert not out.exists()


def test_unknown_exporter(tmp_path):
    with pytest.raises(GmSkipError, match="torchscript"):
        export_vlm(_vlm("llava", tmp_path), tmp_path / "x", exporter="tflite")
