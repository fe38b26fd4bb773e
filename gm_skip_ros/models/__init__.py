"""Models layer: the family table, loading, inputs, and block surgery (no ROS)."""
from gm_skip_ros.models.families import FAMILIES, Family, family_by_name, family_for_model_type
from gm_skip_ros.models.loading import LoadedVLM, build_inputs, load_vlm, prompt_text
from gm_skip_ros.models.surgery import SkipMask, remove_blocks

__all__ = [
    "FAMILIES", "Family", "LoadedVLM", "SkipMask", "build_inputs", "family_by_name",
    "family_for_model_type", "load_vlm", "prompt_text", "remove_blocks",
]
