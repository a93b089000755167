"""The names under which the pack's patches meet ComfyUI: keys in a model's (or a run's, or a
call's) ``transformer_options``, in the conditioning, and of its wrappers and injections; and the
one way a model's ``transformer_options`` is changed (`set_transformer_option`)."""

from __future__ import annotations

from typing import Any

import comfy.model_patcher

# transformer_options of a model
LAYOUT_OPTION = "layerfusion_layout"  # True: the batch is layered ([fg, bg, blend] * N outside a LayerFusion run)
BRANCH_LORA_OPTION = "layerfusion_branch_loras"  # {injection key: BranchLoRA} of this model
FUSION_OPTION = "layerfusion"  # the LayerFusionPatch of this model
# transformer_options of one sampling run (a copy ComfyUI hands to every UNet call of that run)
RUN_OPTION = "layerfusion_run"  # handles each UNet call of a LayerFusion run (it holds the FusionRun)
# transformer_options of one UNet call
CALL_OPTION = "layerfusion_call"  # the FusionCall the attention patches read

# conditioning entries
EOS_KEY = "layerfusion_eos"  # each FG prompt's EOS token index, a tuple in z order (LayerFusion Conditioning)
PLACEMENT_KEY = "layerfusion_placement"  # the foregrounds' placement hints (LayerFusion Placement)
CONCAT_KEY = "noise_concat"  # latents ComfyUI concatenates to the UNet input (c_concat)

# keys of wrappers and injections
ROWS_WRAPPER_KEY = "layerfusion.rows"
BRANCH_LORA_KEY = "layerfusion.branch_lora"  # this prefix and one id per LoRA Apply
FUSION_WRAPPER_KEY = "layerfusion.fusion"
CONDITION_WRAPPER_KEY = "layerfusion.condition_size"


def set_transformer_option(model: comfy.model_patcher.ModelPatcher, key: str, value: Any) -> None:
    """Set ``key`` in ``model``'s transformer_options through a copy of the dict, so clones that
    still share the old dict are not changed."""
    options = dict(model.model_options.get("transformer_options", {}))
    options[key] = value
    model.model_options["transformer_options"] = options


def transformer_option(model: comfy.model_patcher.ModelPatcher, key: str, default: Any = None) -> Any:
    return model.model_options.get("transformer_options", {}).get(key, default)
