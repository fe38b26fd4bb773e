"""TensorRT engine cache: keys, validation, atomic store, rebuild on mismatch, profiles.

The cache logic is plain Python and is tested here without TensorRT; the engine bytes come
from a builder function given to ``get_or_build`` (TensorRT's serialized engine in
production). Tests that need TensorRT itself skip with the reason when it is absent.
"""
import json

import pytest
import torch

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.export import engine_cache as EC
from gm_skip_ros.export.onnx_export import export_vlm

from runtime_support import write_plan


def _key(**kw):
    base = dict(graph="decoder.onnx", onnx_sha256="a" * 64, precision="fp16",
                tensorrt_version="10.13.0", gpu_name="NVIDIA H100", plan_sha256="p" * 64,
                profile={"x": [[1], [2], [4]]}, workspace_bytes=1 << 30)
    base.update(kw)
    return EC.EngineKey(**base)


class Builder:
    """Counts builds; produces engine bytes that depend on the key."""

    def __init__(self, key, fail=False):
        self.key, self.fail, self.calls = key, fail, 0

    def __call__(self):
        self.calls += 1
        if self.fail:
            raise GmSkipError("TensorRT could not build decoder.onnx (out of GPU memory)")
        return b"ENGINE:" + self.key.digest().encode() * 100


@pytest.mark.parametrize("field,value", [
    ("onnx_sha256", "b" * 64), ("precision", "fp32"), ("tensorrt_version", "10.14.1"),
    ("gpu_name", "NVIDIA Jetson Orin"), ("plan_sha256", None),
    ("profile", {"x": [[1], [2], [8]]}), ("workspace_bytes", 2 << 30),
    ("weights_sha256", "w" * 64)])
def test_key_changes_with_every_field(field, value):
    assert _key().digest() != _key(**{field: value}).digest()
    assert _key().filename() != _key(**{field: value}).filename()


def test_precision_validated():
    with pytest.raises(GmSkipError, match="fp16"):
        _key(precision="fp8")


def test_build_once_then_serve(tmp_path):
    key = _key()
    b = Builder(key)
    path, built = EC.get_or_build(tmp_path, key, b)
    assert built and b.calls == 1 and path.name.startswith("decoder-fp16-")
    path2, built2 = EC.get_or_build(tmp_path, key, b)
    assert path2 == path and not built2 and b.calls == 1
    assert EC.load_valid(path, key) == b()
    side = json.loads(EC.sidecar_path(path).read_text())
    assert side["key"] == key.as_dict() and side["engine_bytes"] == path.stat().st_size


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_sidecar", "bad_sidecar",
                                    "other_version"])
def test_damaged_or_stale_engine_rebuilt(tmp_path, damage):
    key = _key()
    b = Builder(key)
    path, _ = EC.get_or_build(tmp_path, key, b)
    side = EC.sidecar_path(path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:10])
    elif damage == "flip":
        data = bytearray(path.read_bytes())
        data[20] ^= 1
        path.write_bytes(bytes(data))
    elif damage == "no_sidecar":
        side.unlink()
    elif damage == "bad_sidecar":
        side.write_text("{")
    else:  # a sidecar written for another TensorRT version under this file name
        meta = json.loads(side.read_text())
        meta["key"]["tensorrt_version"] = "8.6.1"
        side.write_text(json.dumps(meta))
    ok, why = EC.validate(path, key)
    assert not ok and why
    with pytest.raises(GmSkipError, match="build-engine"):
        EC.load_valid(path, key)
    path2, built = EC.get_or_build(tmp_path, key, b)
    assert built and b.calls == 2 and EC.validate(path2, key)[0]


def test_mismatched_key_never_served(tmp_path):
    fp16 = _key()
    path, _ = EC.get_or_build(tmp_path, fp16, Builder(fp16))
    for other in (_key(precision="fp32"), _key(tensorrt_version="10.14"),
                  _key(gpu_name="Orin"), _key(plan_sha256="q" * 64)):
        ok, why = EC.validate(path, other)  # the fp16 engine checked against another key
        assert not ok and "mismatch" in why
        b = Builder(other)
        p2, built = EC.get_or_build(tmp_path, other, b)
        assert built and p2 != path and EC.load_valid(p2, other) == b()


def test_failed_build_leaves_nothing(tmp_path):
    key = _key()
    with pytest.raises(GmSkipError, match="GPU memory"):
        EC.get_or_build(tmp_path / "c", key, Builder(key, fail=True))
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())
    with pytest.raises(GmSkipError, match="empty"):
        EC.store(tmp_path / "c", key, b"")
    assert not EC.engine_path(tmp_path / "c", key).exists()


def test_profiles_from_exported_graphs(tiny_llava_dir, tmp_path):
    from gm_skip_ros.models import load_vlm

    torch.set_num_threads(1)
    vlm = load_vlm(tiny_llava_dir)
    plan = write_plan(tmp_path / "plan.json", vlm.identity(), removed=[1])
    from gm_skip_ros.search.plan import load_pruned_vlm

    pruned = load_pruned_vlm(tiny_llava_dir, plan)
    out = export_vlm(pruned, tmp_path / "onnx", plan_path=plan, exporter="torchscript")
    opts = EC.ProfileOptions(max_seq=128, opt_seq=64, max_past=256, opt_past=100)
    prof = EC.profile_from_onnx(out / "decoder.onnx", opts)
    assert set(prof) == {"inputs_embeds", "attention_mask", "position_ids",
                         *[f"past_key_values.{i}.{kv}" for i in range(5) for kv in ("key", "value")]}
    mn, opt, mx = prof["inputs_embeds"]
    assert mn == [1, 1, 64] and opt == [1, 64, 64] and mx == [1, 128, 64]
    assert prof["past_key_values.0.key"] == [[1, 2, 0, 16], [1, 2, 100, 16], [1, 2, 256, 16]]
    assert prof["attention_mask"][2] == [1, 384]
    vis = EC.profile_from_onnx(out / "vision.onnx", opts)
    assert vis == {"pixel_values": [[1, 3, 32, 32]] * 3}
    # the keys of the two graphs differ, and by ONNX content
    from gm_skip_ros.export.tensorrt_builder import engine_keys

    keys = engine_keys(out, "fp16", tensorrt_version="10.13", gpu="H100", options=opts)
    man = json.loads((out / "manifest.json").read_text())
    assert keys["decoder.onnx"].plan_sha256 == man["plan_sha256"]
    assert keys["decoder.onnx"].digest() != keys["vision.onnx"].digest()
    assert keys["decoder.onnx"].onnx_sha256 != keys["vision.onnx"].onnx_sha256
    for g in ("decoder.onnx", "vision.onnx"):
        assert keys[g].onnx_sha256 == man["files"][g]
        assert keys[g].weights_sha256 and len(keys[g].weights_sha256) == 64


def _rewrite_manifest(d, **changes):
    mp = d / "manifest.json"
    man = json.loads(mp.read_text())
    man.update(changes)
    mp.write_text(json.dumps(man))
    return man


def test_engine_key_names_the_weights(tiny_llava_dir, tmp_path):
    """Same graph bytes, other weights -> another engine key (never a cache hit)."""
    import shutil

    import onnx

    from gm_skip_ros.export.tensorrt_builder import engine_keys, external_data_files
    from gm_skip_ros.io import sha256_file
    from gm_skip_ros.models import load_vlm

    torch.set_num_threads(1)
    out = export_vlm(load_vlm(tiny_llava_dir), tmp_path / "onnx", exporter="torchscript")
    assert external_data_files(out / "decoder.onnx") == []
    opts = EC.ProfileOptions(max_seq=16, opt_seq=8, max_past=32, opt_past=8)

    def keys(d):
        return engine_keys(d, "fp16", tensorrt_version="10.13", gpu="H100", options=opts)

    # 1. another model of the same architecture (manifest model identity differs)
    other = tmp_path / "other_model"
    shutil.copytree(out, other)
    man = json.loads((out / "manifest.json").read_text())
    _rewrite_manifest(other, model_identity={**man["model_identity"],
                                             "weights_sha256": "f" * 64})
    ka, kb = keys(out), keys(other)
    for g in ("decoder.onnx", "vision.onnx"):
        assert ka[g].onnx_sha256 == kb[g].onnx_sha256  # identical graph bytes...
        assert ka[g].weights_sha256 != kb[g].weights_sha256  # ...other weights
        assert ka[g].digest() != kb[g].digest() and ka[g].filename() != kb[g].filename()
    ok, why = EC.validate(EC.store(tmp_path / "cache", ka["decoder.onnx"], b"E"),
                          kb["decoder.onnx"])
    assert not ok and "weights_sha256" in why

    # 2. weights beside the .onnx (external data): same .onnx bytes, other data file
    ext = []
    for name, delta in (("ext_a", 0.0), ("ext_b", 1.0)):
        d = tmp_path / name
        shutil.copytree(out, d)
        m = onnx.load(str(d / "decoder.onnx"))
        for t in m.graph.initializer:
            if t.data_type == onnx.TensorProto.FLOAT and delta:
                arr = onnx.numpy_helper.to_array(t) + delta
                t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
        onnx.save_model(m, str(d / "decoder.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="decoder.onnx.data",
                        size_threshold=0)
        files = dict(man["files"])
        files["decoder.onnx"] = sha256_file(d / "decoder.onnx")
        files["decoder.onnx.data"] = sha256_file(d / "decoder.onnx.data")
        _rewrite_manifest(d, files=files)
        ext.append(d)
    assert (ext[0] / "decoder.onnx").read_bytes() == (ext[1] / "decoder.onnx").read_bytes()
    assert external_data_files(ext[0] / "decoder.onnx") == ["decoder.onnx.data"]
    ka, kb = keys(ext[0]), keys(ext[1])
    assert ka["decoder.onnx"].onnx_sha256 == kb["decoder.onnx"].onnx_sha256
    assert ka["decoder.onnx"].weights_sha256 != kb["decoder.onnx"].weights_sha256
    assert ka["decoder.onnx"].digest() != kb["decoder.onnx"].digest()
    assert ka["vision.onnx"] == kb["vision.onnx"]  # the vision graph and its weights are shared
    # a modified data file is refused (manifest digest), not keyed and served
    (ext[1] / "decoder.onnx.data").write_bytes(b"x" + (ext[1] / "decoder.onnx.data").read_bytes())
    with pytest.raises(GmSkipError, match="sha256"):
        keys(ext[1])


def test_tensorrt_backend_refused_without_tensorrt(tiny_llava_dir):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    from gm_skip_ros.runtime import create_backend

    with pytest.raises(GmSkipError, match="onnxruntime"):
        create_backend("tensorrt", tiny_llava_dir, device="cuda" if torch.cuda.is_available()
                       else "cpu")


@pytest.mark.tensorrt
def test_tensorrt_build_and_parity(tiny_llava_dir, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installable in this workplace "
                        "(no binary wheel on PyPI, none on the lent GPU machines)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    from gm_skip_ros.runtime import create_backend

    ref = create_backend("torch", tiny_llava_dir, device="cuda", dtype=torch.float32)
    trt_b = create_backend("tensorrt", tiny_llava_dir, device="cuda", precision="fp32",
                           engine_cache_dir=tmp_path / "eng", export_cache_dir=tmp_path / "onnx")
    import numpy as np

    img = np.zeros((32, 32, 3), np.uint8)
    tokens = ref.generate(img, "what", 8).tokens
    assert len(set(tokens)) > 1  # a constant sequence would make the parity check weak
    assert trt_b.generate(img, "what", 8).tokens == tokens
