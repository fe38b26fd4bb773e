"""The parameter table, the JSON schema and config/gm_skip.param.yaml agree; validation."""
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from gm_skip_ros.errors import GmSkipError
from gm_skip_ros.ros import parameters as P

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "gm_skip_ros" / "schema" / "gm_skip.schema.json"
PARAM_FILE = REPO / "config" / "gm_skip.param.yaml"


def _load_schema():
    return json.loads(SCHEMA.read_text())


def test_schema_file_is_the_one_generated_from_the_table():
    assert _load_schema() == P.json_schema(), (
        "schema out of date: run `python -m gm_skip_ros.ros.parameters --write-schema`")


def test_schema_is_valid_draft7_and_strict():
    schema = _load_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    node = schema["definitions"]["vlm_node"]
    assert node["additionalProperties"] is False and schema["additionalProperties"] is False
    assert set(node["required"]) == set(P.BY_NAME)
    for p in P.PARAMETERS:
        prop = node["properties"][p.name]
        assert prop["default"] == p.default and prop["description"] == p.description
        if p.choices:
            assert prop["enum"] == list(p.choices)
        if p.minimum is not None:
            assert prop["minimum"] == p.minimum and prop["maximum"] == p.maximum
        if p.nonblank:
            assert prop["minLength"] == 1 and prop["pattern"] == "\\S"
    assert P.BY_NAME["prompt"].nonblank


@pytest.mark.parametrize("prompt", ["x", "  What is ahead?  ", "\u00e9"])
def test_schema_accepts_what_validation_accepts_for_prompt(prompt):
    doc = yaml.safe_load(PARAM_FILE.read_text())
    doc["/**"]["ros__parameters"]["prompt"] = prompt
    jsonschema.validate(doc, _load_schema())
    values = dict(doc["/**"]["ros__parameters"], model_dir="/m")
    assert P.validate(values)["prompt"] == prompt


def test_param_file_matches_table_and_validates_against_schema():
    doc = yaml.safe_load(PARAM_FILE.read_text())
    jsonschema.validate(doc, _load_schema())
    values = doc["/**"]["ros__parameters"]
    assert set(values) == set(P.BY_NAME)
    for name, value in values.items():
        assert value == P.BY_NAME[name].default, f"{name}: yaml {value!r} != table default"
        assert type(value) is P.BY_NAME[name].type, f"{name}: yaml type {type(value)}"


@pytest.mark.parametrize("name,value", [
    ("backend", "tensorflow"), ("device", "tpu"), ("precision", "fp8"),
    ("max_new_tokens", 0), ("max_new_tokens", 5000), ("max_inference_rate_hz", -1.0),
    ("latency_budget_ms", 0.0), ("num_threads", -2), ("use_compressed_image", "yes"),
    ("extra_parameter", 1), ("prompt", ""), ("prompt", "   "), ("prompt", "\t\n"),
])
def test_schema_rejects_what_validation_rejects(name, value):
    doc = yaml.safe_load(PARAM_FILE.read_text())
    doc["/**"]["ros__parameters"][name] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, _load_schema())
    values = dict(doc["/**"]["ros__parameters"], model_dir="/m")
    with pytest.raises(GmSkipError, match=name):
        P.validate(values)


def test_validate_accepts_defaults_with_model_dir_and_promotes_ints():
    values = dict(P.defaults(), model_dir="/m", latency_budget_ms=500)
    out = P.validate(values)
    assert out["latency_budget_ms"] == 500.0 and isinstance(out["latency_budget_ms"], float)


@pytest.mark.parametrize("changes,word", [
    (dict(max_new_tokens=True), "max_new_tokens"),
    (dict(max_new_tokens=3.0), "max_new_tokens"),
    (dict(latency_budget_ms=float("nan")), "latency_budget_ms"),
    (dict(prompt="  "), "prompt"),
    (dict(backend="tensorrt", device="cpu"), "backend"),
])
def test_validate_names_the_parameter(changes, word):
    values = {**P.defaults(), "model_dir": "/m", **changes}
    with pytest.raises(GmSkipError, match=word):
        P.validate(values)


def test_empty_model_dir_means_the_demo_model(tmp_path, monkeypatch):
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "config.json").write_text("{}")
    (demo / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("GM_SKIP_DEMO_MODEL", str(demo))
    assert P.validate({**P.defaults(), "model_dir": ""})["model_dir"] == str(demo)
    monkeypatch.setenv("GM_SKIP_DEMO_MODEL", str(tmp_path / "nowhere"))
    with pytest.raises(GmSkipError, match="model_dir"):
        P.validate({**P.defaults(), "model_dir": ""})


def test_check_files(tmp_path):
    values = dict(P.defaults(), model_dir=str(tmp_path / "missing"))
    with pytest.raises(GmSkipError, match="model_dir"):
        P.check_files(values)
    (tmp_path / "config.json").write_text("{}")
    values["model_dir"] = str(tmp_path)
    P.check_files(values)
    values["plan_path"] = str(tmp_path / "plan.json")
    with pytest.raises(GmSkipError, match="plan_path"):
        P.check_files(values)
