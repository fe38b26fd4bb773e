"""The one table of supported model families: where their blocks live, which config
fields describe them.

To support a new family, add one ``Family`` here (and a tiny config in ``tiny.py`` so the
tests cover it). For a model that is not in the table, pass the block paths by hand
(``--decoder-path`` / ``--vision-path`` on the CLI, ``decoder_path=`` in Python).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gm_skip_ros.errors import GmSkipError


@dataclass(frozen=True)
class Family:
    """Where a family keeps its transformer blocks.

    name:             short family name used in plans and messages.
    model_types:      ``config.model_type`` values that belong to this family.
    decoder_path:     dotted attribute path from the top-level model to the language
                      decoder's ``ModuleList`` of blocks.
    vision_path:      same for the vision encoder's blocks (None: not supported).
    vision_count_key: field of the vision config holding the block count.
    decoder_lists:    per-layer lists in the text config (one entry per decoder block),
                      shortened on removal.
    vision_index_lists: fields of the vision config (and attributes of the vision module)
                      that hold *block indices*; remapped on removal.
    """

    name: str
    model_types: tuple[str, ...]
    decoder_path: str
    vision_path: str | None
    text_config_attr: str = "text_config"
    vision_config_attr: str = "vision_config"
    vision_count_key: str = "num_hidden_layers"
    decoder_lists: tuple[str, ...] = ("layer_types",)
    vision_index_lists: tuple[str, ...] = ()
    exportable: bool = True
    notes: str = ""
    extra: dict = field(default_factory=dict)


FAMILIES: tuple[Family, ...] = (
    Family(
        name="llava",
        model_types=("llava",),
        decoder_path="model.language_model.layers",
        vision_path="model.vision_tower.encoder.layers",
        notes="CLIP or SigLIP vision tower + Llama/Qwen2/Mistral decoder",
    ),
    Family(
        name="qwen2_vl",
        model_types=("qwen2_vl",),
        decoder_path="model.language_model.layers",
        vision_path="model.visual.blocks",
        vision_count_key="depth",
    ),
    Family(
        name="qwen2_5_vl",
        model_types=("qwen2_5_vl",),
        decoder_path="model.language_model.layers",
        vision_path="model.visual.blocks",
        vision_count_key="depth",
        vision_index_lists=("fullatt_block_indexes",),
    ),
    Family(
        name="qwen3_vl",
        model_types=("qwen3_vl",),
        decoder_path="model.language_model.layers",
        vision_path="model.visual.blocks",
        vision_count_key="depth",
        vision_index_lists=("deepstack_visual_indexes",),
        notes="deepstack features are added to the first decoder blocks: keep "
        "protect_first >= len(deepstack_visual_indexes)",
    ),
    Family(
        name="idefics3",
        model_types=("idefics3", "smolvlm"),
        decoder_path="model.text_model.layers",
        vision_path="model.vision_model.encoder.layers",
        notes="Idefics3 and SmolVLM share one layout",
    ),
    Family(
        name="paligemma",
        model_types=("paligemma",),
        decoder_path="model.language_model.layers",
        vision_path="model.vision_tower.encoder.layers",
        notes="prefix-LM attention: inputs need token_type_ids",
    ),
    Family(
        name="gemma3",
        model_types=("gemma3",),
        decoder_path="model.language_model.layers",
        vision_path="model.vision_tower.encoder.layers",
        notes="sliding/full attention per block in text_config.layer_types",
    ),
)


def supported_summary() -> str:
    return ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES)


def family_for_model_type(model_type: str) -> Family:
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    raise GmSkipError(
        f"unsupported architecture model_type={model_type!r}; supported families: "
        f"{supported_summary()}. For another architecture pass the block paths by hand, "
        "e.g. --decoder-path model.language_model.layers [--vision-path model.visual.blocks]"
    )


def family_by_name(name: str) -> Family:
    for fam in FAMILIES:
        if fam.name == name:
            return fam
    raise GmSkipError(f"unknown family {name!r}; known: {', '.join(f.name for f in FAMILIES)}")


def custom_family(model_type: str, decoder_path: str, vision_path: str | None) -> Family:
    """A family for an architecture not in the table, from user-given block paths."""
    return Family(name=f"custom:{model_type}", model_types=(model_type,),
                  decoder_path=decoder_path, vision_path=vision_path, exportable=False)


def get_path(root, path: str):
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def set_path(root, path: str, value) -> None:
    parent, _, last = path.rpartition(".")
    setattr(get_path(root, parent) if parent else root, last, value)


def resolve_blocks(model, path: str, what: str):
    """Return the ``ModuleList`` at ``path`` or raise a GmSkipError that says what to do."""
    import torch

    try:
        blocks = get_path(model, path)
    except (AttributeError, IndexError) as exc:
        raise GmSkipError(
            f"{what} block path {path!r} does not exist in {type(model).__name__} ({exc}); "
            "pass the dotted path to the ModuleList of blocks, e.g. model.language_model.layers"
        ) from None
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) == 0:
        raise GmSkipError(
            f"{what} block path {path!r} is a {type(blocks).__name__}, not a non-empty "
            "ModuleList of transformer blocks"
        )
    return blocks
