"""The vlm_node's parameters: ONE table, from which the node declares them (with
ParameterDescriptors), the JSON schema in ``gm_skip_ros/schema/gm_skip.schema.json`` is
generated and checked, and values are validated.

No rclpy here, so the validation is unit-tested without ROS. Regenerate the schema after
changing the table with ``python -m gm_skip_ros.ros.parameters --write-schema``.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gm_skip_ros.errors import GmSkipError

NODE_NAME = "vlm_node"
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schema" / "gm_skip.schema.json"


@dataclass(frozen=True)
class Param:
    """One parameter: ``type`` is ``str``, ``int``, ``float`` or ``bool``; ``minimum`` /
    ``maximum`` are inclusive; ``choices`` lists the allowed values of a string;
    ``read_only`` parameters can only be set at start (paths, backend, subscriptions);
    ``nonblank`` strings must contain a non-whitespace character (schema: ``"pattern":
    "\\S"``)."""

    name: str
    type: type
    default: Any
    description: str
    choices: tuple = ()
    minimum: float | int | None = None
    maximum: float | int | None = None
    read_only: bool = True
    nonblank: bool = False


PARAMETERS: tuple[Param, ...] = (
    Param("model_dir", str, "",
          "Directory of the (full, unpruned) Hugging Face VLM: config, weights, processor. "
          "Empty: the project's shipped demo VLM (models/demo_vlm)."),
    Param("plan_path", str, "",
          "Skip plan JSON from `gm-skip search`; its blocks are physically removed before "
          "inference. Empty: run the full model."),
    Param("backend", str, "torch", "Inference backend.",
          choices=("torch", "onnxruntime", "tensorrt")),
    Param("device", str, "cpu", "Device the backend runs on.", choices=("cpu", "cuda")),
    Param("onnx_dir", str, "",
          "Directory of the exported ONNX graphs (`gm-skip export`) for the onnxruntime and "
          "tensorrt backends. Empty: the backend's default location."),
    Param("engine_cache_dir", str, "",
          "Directory of cached TensorRT engines (tensorrt backend). Empty: the backend's "
          "default location."),
    Param("precision", str, "fp32", "Numeric precision of the backend.",
          choices=("fp32", "fp16", "int8")),
    Param("num_threads", int, 0,
          "CPU threads of the backend's intra-op pool. 0: the library's default.",
          minimum=0, maximum=256),
    Param("prompt", str, "Describe the scene.",
          "Prompt sent with every frame; not empty or only whitespace.", read_only=False,
          nonblank=True),
    Param("max_new_tokens", int, 16,
          "Upper bound on the tokens generated per frame.", minimum=1, maximum=1024,
          read_only=False),
    Param("max_inference_rate_hz", float, 10.0,
          "Upper bound on inferences per second; frames arriving faster are dropped "
          "(newest kept). 0: as fast as the model runs.", minimum=0.0, maximum=1000.0,
          read_only=False),
    Param("latency_budget_ms", float, 1000.0,
          "Pipeline latency budget (image stamp to published description): /diagnostics is "
          "WARN above it and ERROR above twice it.", minimum=1.0, maximum=600000.0,
          read_only=False),
    Param("use_compressed_image", bool, False,
          "Subscribe to sensor_msgs/CompressedImage on ~/input/image instead of "
          "sensor_msgs/Image."),
    Param("input_reliability", str, "best_effort",
          "Reliability of the ~/input/image subscription (sensor-data QoS otherwise, depth 1 "
          "when reliable). best_effort matches any camera publisher; reliable needs a reliable "
          "publisher but does not lose large frames to UDP fragment loss.",
          choices=("best_effort", "reliable")),
    Param("max_image_pixels", int, 16_777_216,
          "Frames with more pixels (width*height) are rejected and counted.",
          minimum=1, maximum=1_000_000_000),
    Param("diagnostics_period_s", float, 1.0,
          "Period of the /diagnostics status, in seconds.", minimum=0.05, maximum=60.0),
)

BY_NAME = {p.name: p for p in PARAMETERS}
PATH_PARAMETERS = ("model_dir", "plan_path", "onnx_dir", "engine_cache_dir")

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
_TYPE_WORDS = {str: "a string", int: "an integer", float: "a float", bool: "a boolean"}


def defaults() -> dict[str, Any]:
    return {p.name: p.default for p in PARAMETERS}


def check_value(name: str, value: Any) -> Any:
    """Return ``value`` (an int is accepted for a float) or raise GmSkipError naming ``name``."""
    if name not in BY_NAME:
        raise GmSkipError(f"unknown parameter {name!r}; known: {', '.join(BY_NAME)}")
    p = BY_NAME[name]
    ok_type = isinstance(value, p.type) and not (p.type is int and isinstance(value, bool))
    if p.type is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok_type = float(value), True
    if not ok_type:
        raise GmSkipError(
            f"parameter {name} must be {_TYPE_WORDS[p.type]}, got {value!r} "
            f"({type(value).__name__}); {p.description}")
    if p.type is float and not math.isfinite(value):
        raise GmSkipError(f"parameter {name} must be finite, got {value!r}")
    if p.choices and value not in p.choices:
        raise GmSkipError(
            f"parameter {name} must be one of {', '.join(p.choices)}; got {value!r}")
    if p.minimum is not None and value < p.minimum:
        raise GmSkipError(f"parameter {name} must be >= {p.minimum}; got {value!r}")
    if p.maximum is not None and value > p.maximum:
        raise GmSkipError(f"parameter {name} must be <= {p.maximum}; got {value!r}")
    if p.nonblank and not value.strip():
        raise GmSkipError(f"parameter {name} must not be empty or only whitespace; "
                          f"got {value!r}")
    return value


def validate(values: dict[str, Any]) -> dict[str, Any]:
    """Check every value of a full parameter set and the rules between them; return it
    with ints promoted to floats where the table says float. Raises GmSkipError."""
    out = {name: check_value(name, value) for name, value in values.items()}
    missing = [p.name for p in PARAMETERS if p.name not in out]
    if missing:
        raise GmSkipError(f"parameters missing: {', '.join(missing)}")
    if not out["model_dir"]:
        from gm_skip_ros.models.demo import default_model_dir

        try:
            out["model_dir"] = str(default_model_dir())
        except GmSkipError as exc:
            raise GmSkipError(f"parameter model_dir is empty and the demo model is missing "
                              f"({exc}); pass `-p model_dir:=/path/to/model`") from None
    if out["device"] == "cpu" and out["backend"] == "tensorrt":
        raise GmSkipError("parameter backend=tensorrt needs device=cuda")
    return out


def check_files(values: dict[str, Any]) -> None:
    """Raise GmSkipError naming the parameter when a configured path does not exist."""
    model_dir = Path(values["model_dir"]).expanduser()
    if not model_dir.is_dir():
        raise GmSkipError(f"parameter model_dir: {model_dir} is not a directory; pass the "
                          "directory of a saved model")
    if not (model_dir / "config.json").is_file():
        raise GmSkipError(f"parameter model_dir: {model_dir} has no config.json; is it a "
                          "saved Hugging Face model directory?")
    plan = values["plan_path"]
    if plan and not Path(plan).expanduser().is_file():
        raise GmSkipError(f"parameter plan_path: {plan} does not exist; pass a plan written by "
                          "`gm-skip search`, or '' to run the full model")
    onnx_dir = values["onnx_dir"]
    if onnx_dir and not Path(onnx_dir).expanduser().is_dir():
        raise GmSkipError(f"parameter onnx_dir: {onnx_dir} is not a directory; run "
                          "`gm-skip export` first or leave it empty")


def json_schema() -> dict:
    """The draft-07 schema of ``config/gm_skip.param.yaml``, generated from the table."""
    props = {}
    for p in PARAMETERS:
        prop: dict[str, Any] = {"type": _JSON_TYPES[p.type], "description": p.description,
                                "default": p.default}
        if p.choices:
            prop["enum"] = list(p.choices)
        if p.minimum is not None:
            prop["minimum"] = p.minimum
        if p.maximum is not None:
            prop["maximum"] = p.maximum
        if p.nonblank:
            prop["minLength"] = 1
            prop["pattern"] = "\\S"  # a non-whitespace character somewhere (as check_value)
        props[p.name] = prop
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Parameters for gm_skip_ros vlm_node",
        "type": "object",
        "definitions": {
            NODE_NAME: {
                "type": "object",
                "properties": props,
                "required": [p.name for p in PARAMETERS],
                "additionalProperties": False,
            }
        },
        "properties": {
            "/**": {
                "type": "object",
                "properties": {"ros__parameters": {"$ref": f"#/definitions/{NODE_NAME}"}},
                "required": ["ros__parameters"],
                "additionalProperties": False,
            }
        },
        "required": ["/**"],
        "additionalProperties": False,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-schema", action="store_true",
                    help=f"write the schema to {SCHEMA_PATH} instead of printing it")
    args = ap.parse_args(argv)
    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.write_schema:
        from gm_skip_ros.io import atomic_write_text

        atomic_write_text(SCHEMA_PATH, text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
