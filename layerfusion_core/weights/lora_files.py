"""Reading LoRA files for `LayerFusion LoRA Apply`, validated against the target model before
anything is applied.

Two formats:
- LayerDiffuse's "frozen patcher" keys, ``<model key>::lora::<i>`` (0 = up ``[out, r]``, 1 = down
  ``[r, in]``, no alpha) and ``<model key>::diff::0`` (a full delta), read here;
- ordinary LoRA files (kohya / diffusers / ComfyUI naming), mapped to the UNet with ComfyUI's own
  key mapping (`comfy.lora`).

The result is a `LoadedLoRA`: low-rank factors for Linear layers (which can run on some rows of a
batch only) and, apart, whatever cannot (full deltas, conv or DoRA adapters). Every problem is a
`LoRAFileError` naming the file and what was expected; a file is accepted whole or not at all.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from .known_files import FileKind, known_file
from .safetensors_io import WeightFileError, read_safetensors

FROZEN_KEY = re.compile(r"^(?P<target>.+)::(?P<kind>[a-z_]+)::(?P<index>\d+)$")
TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder", "te_", "te1", "te2", "clip_", "lora_clip")
SD15_ONLY_BLOCKS = re.compile(r"(input_blocks\.[12]\.1\.|output_blocks\.(9|10|11)\.1\.)")
EXAMPLE_SDXL_KEY = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight::lora::0"


class LoRAFileError(WeightFileError):
    """A LoRA file that cannot be applied to this model, and why."""


@dataclasses.dataclass(frozen=True)
class LowRank:
    """``W + scale * up @ down`` for a Linear weight ``W [out, in]``: up ``[out, r]``, down ``[r, in]``."""

    up: torch.Tensor
    down: torch.Tensor
    scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class LoadedLoRA:
    file_name: str
    low_rank: dict[str, LowRank]  # module path ("diffusion_model....to_q") -> factors
    full_patches: dict[str, Any]  # weight key -> ComfyUI weight patch (not applicable per row)
    ignored_keys: int = 0  # text-encoder keys of an ordinary LoRA (this node patches the UNet only)

    @property
    def patched_weights(self) -> int:
        return len(self.low_rank) + len(self.full_patches)


def is_frozen_format(tensors: Mapping[str, torch.Tensor]) -> bool:
    return any("::" in k for k in tensors)


# ---- LayerDiffuse frozen-patcher files --------------------------------------------------------
def _sd15_hint(targets: list[str], model_shapes: Mapping[str, torch.Size]) -> str:
    if any(SD15_ONLY_BLOCKS.search(t) for t in targets) and not any(SD15_ONLY_BLOCKS.search(k) for k in model_shapes):
        return " It looks like an SD1.5 file; this model is SDXL: use the SDXL file (layer_xl_...)."
    if not any(SD15_ONLY_BLOCKS.search(t) for t in targets) and any(SD15_ONLY_BLOCKS.search(k) for k in model_shapes):
        return " It looks like an SDXL file; this model is not SDXL."
    return ""


INPUT_CONV = "diffusion_model.input_blocks.0.0.weight"


def widened_input_channels(delta: torch.Tensor, weight_shape: tuple[int, ...]) -> bool:
    """True for a delta of the input conv with more input channels than the weight (the
    conditional models' extra channels for the condition latents), everything else equal."""
    return (len(delta.shape) == 4 and len(weight_shape) == 4 and delta.shape[1] > weight_shape[1]
            and delta.shape[0] == weight_shape[0] and tuple(delta.shape[2:]) == tuple(weight_shape[2:]))


def load_frozen(file_name: str, tensors: Mapping[str, torch.Tensor], model_shapes: Mapping[str, torch.Size],
                allow_widened_input: bool = False) -> LoadedLoRA:
    """Validate a frozen-patcher file against ``model_shapes`` (``diffusion_model.``-prefixed
    state-dict shapes) and split it into low-rank factors and full deltas. With
    ``allow_widened_input`` (the conditional models), the input conv's delta may have more input
    channels than the weight; it becomes a ComfyUI ``diff`` patch that zero-pads the weight."""
    groups: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for key, tensor in tensors.items():
        m = FROZEN_KEY.match(key)
        if m is None or m["kind"] not in ("lora", "diff"):
            raise LoRAFileError(f"{file_name}: key {key!r} is not in LayerDiffuse's format ('<model key>::lora::<i>' or '::diff::0')")
        groups.setdefault(m["target"], {}).setdefault(m["kind"], {})[int(m["index"])] = tensor
    targets = sorted(groups)
    missing = [t for t in targets if t not in model_shapes]
    if len(missing) == len(targets):
        raise LoRAFileError(
            f"{file_name}: none of its {len(targets)} weights matched a layer of this model's UNet "
            f"(expected keys like {EXAMPLE_SDXL_KEY!r}).{_sd15_hint(targets, model_shapes)}"
        )
    if missing:
        raise LoRAFileError(
            f"{file_name}: {len(missing)} of its {len(targets)} weights have no layer in this model "
            f"(e.g. {missing[0]!r}); nothing was applied.{_sd15_hint(targets, model_shapes)}"
        )
    low_rank: dict[str, LowRank] = {}
    full: dict[str, Any] = {}
    for target in targets:
        kinds, shape = groups[target], tuple(model_shapes[target])
        if "lora" in kinds:
            up, down = kinds["lora"].get(0), kinds["lora"].get(1)
            if up is None or down is None or len(shape) != 2:
                raise LoRAFileError(f"{file_name}: {target}: expected '::lora::0' (up) and '::lora::1' (down) for a Linear weight")
            rank = up.shape[-1]
            if tuple(up.shape) != (shape[0], rank) or tuple(down.shape) != (rank, shape[1]):
                raise LoRAFileError(
                    f"{file_name}: {target}: up {tuple(up.shape)} and down {tuple(down.shape)} do not fit the weight "
                    f"{shape}; expected up ({shape[0]}, r) and down (r, {shape[1]}). Is this file for another model?"
                )
            low_rank[target.removesuffix(".weight")] = LowRank(up, down)
        if "diff" in kinds:
            delta = kinds["diff"][0]
            if allow_widened_input and target == INPUT_CONV and widened_input_channels(delta, shape):
                full[target] = ("diff", (delta, {"pad_weight": True}))
            elif tuple(delta.shape) != shape:
                raise LoRAFileError(
                    f"{file_name}: {target}: delta {tuple(delta.shape)} does not fit the weight {shape}"
                    + (" (a widened input conv: this is a conditional model, not a LoRA)" if "input_blocks.0.0" in target else "")
                )
            else:
                full[target] = ("diff", (delta,))
    return LoadedLoRA(file_name, low_rank, full)


# ---- ordinary LoRA files ----------------------------------------------------------------------
def _key_prefixes(key: str) -> list[str]:
    """The names a LoRA tensor key may have been derived from (its '.'-prefixes, minus '_lora')."""
    parts = key.split(".")
    out = []
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        out += [prefix, prefix.removesuffix("_lora")]
    return out


def load_ordinary(file_name: str, tensors: Mapping[str, torch.Tensor], comfy_model) -> LoadedLoRA:
    """An ordinary LoRA mapped onto ``comfy_model`` (a `comfy.model_base.BaseModel`) with
    ComfyUI's own key mapping. UNet keys that do not map are an error; text-encoder keys are
    counted and left alone (this node patches the UNet)."""
    import comfy.lora
    import comfy.weight_adapter

    key_map = comfy.lora.model_lora_keys_unet(comfy_model, {})
    unet_keys = [k for k in tensors if not k.lower().startswith(TEXT_ENCODER_PREFIXES)]
    ignored = len(tensors) - len(unet_keys)
    unmatched = [k for k in unet_keys if not any(p in key_map for p in _key_prefixes(k))]
    if unet_keys and len(unmatched) == len(unet_keys):
        raise LoRAFileError(
            f"{file_name}: none of its {len(unet_keys)} UNet keys matched a layer of this model "
            f"(e.g. {unet_keys[0]!r}); is it a LoRA for another model family?"
        )
    if unmatched:
        raise LoRAFileError(
            f"{file_name}: {len(unmatched)} of its {len(unet_keys)} UNet keys match no layer of this model "
            f"(e.g. {unmatched[0]!r}); nothing was applied"
        )
    if not unet_keys:
        raise LoRAFileError(f"{file_name}: has no UNet weights (only {ignored} text-encoder keys); this node patches the UNet")
    patches = comfy.lora.load_lora(dict(tensors), key_map, log_missing=False)
    shapes = {k: v.shape for k, v in comfy_model.state_dict().items()}
    low_rank: dict[str, LowRank] = {}
    full: dict[str, Any] = {}
    for weight_key, patch in patches.items():
        if not isinstance(weight_key, str):  # sliced targets (not used by SDXL UNets)
            full[weight_key] = patch
            continue
        lora = _as_low_rank(patch, shapes.get(weight_key))
        if lora is None:
            full[weight_key] = patch
        else:
            low_rank[weight_key.removesuffix(".weight")] = lora
    return LoadedLoRA(file_name, low_rank, full, ignored_keys=ignored)


def _as_low_rank(patch: Any, weight_shape: torch.Size | None) -> LowRank | None:
    """Plain Linear LoRA adapters become factors; anything else stays a ComfyUI weight patch."""
    import comfy.weight_adapter

    if not isinstance(patch, comfy.weight_adapter.LoRAAdapter) or weight_shape is None or len(weight_shape) != 2:
        return None
    up, down, alpha, mid, dora_scale, reshape = patch.weights
    if mid is not None or dora_scale is not None or reshape is not None or up.ndim != 2 or down.ndim != 2:
        return None
    if tuple(weight_shape) != (up.shape[0], down.shape[1]):
        raise LoRAFileError(f"LoRA factors {tuple(up.shape)} x {tuple(down.shape)} do not fit a weight {tuple(weight_shape)}")
    scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
    return LowRank(up, down, scale)


def load_lora(path: str, comfy_model, shapes: Mapping[str, torch.Size] | None = None) -> LoadedLoRA:
    """Read and validate a LoRA file against ``comfy_model`` (a `comfy.model_base.BaseModel`) whose
    UNet weights have ``shapes`` (``diffusion_model.``-prefixed; default: as they are now)."""
    file_name = os.path.basename(path)
    known = known_file(file_name)
    if known is not None and known.kind not in (FileKind.ATTENTION_LORA, FileKind.FULL_DELTA):
        raise LoRAFileError(f"{file_name}: is a LayerDiffuse {known.kind.value}, not a LoRA; use it with the node made for it")
    try:
        tensors = read_safetensors(path)
    except WeightFileError as err:
        raise LoRAFileError(str(err)) from None
    if not tensors:
        raise LoRAFileError(f"{file_name}: holds no tensors")
    if is_frozen_format(tensors):
        return load_frozen(file_name, tensors, shapes or _current_shapes(comfy_model))
    return load_ordinary(file_name, tensors, comfy_model)


def _current_shapes(comfy_model) -> dict[str, torch.Size]:
    return {f"diffusion_model.{k}": v.shape for k, v in comfy_model.diffusion_model.state_dict().items()}


def load_conditional(path: str, comfy_model, shapes: Mapping[str, torch.Size] | None = None) -> tuple[LoadedLoRA, int]:
    """A LayerDiffuse conditional model (fg2ble, bg2ble, fgble2bg, bgble2fg) validated against
    ``comfy_model``, and how many 4-channel condition latents its widened input conv takes."""
    file_name = os.path.basename(path)
    known = known_file(file_name)
    if known is not None and known.kind is not FileKind.CONDITIONAL:
        raise LoRAFileError(f"{file_name}: is a LayerDiffuse {known.kind.value}, not a conditional model "
                            "(layer_xl_fg2ble, _bg2ble, _fgble2bg or _bgble2fg)")
    try:
        tensors = read_safetensors(path)
    except WeightFileError as err:
        raise LoRAFileError(str(err)) from None
    if not is_frozen_format(tensors):
        raise LoRAFileError(f"{file_name}: not in LayerDiffuse's format ('<model key>::diff::0'); is it an ordinary LoRA?")
    shapes = shapes or _current_shapes(comfy_model)
    lora = load_frozen(file_name, tensors, shapes, allow_widened_input=True)
    conv = lora.full_patches.get(INPUT_CONV)
    if conv is None or len(conv[1]) < 2:
        raise LoRAFileError(f"{file_name}: its input conv is not widened, so it takes no condition latent; "
                            "expected a conditional model (layer_xl_fg2ble, _bg2ble, _fgble2bg or _bgble2fg)")
    extra = conv[1][0].shape[1] - shapes[INPUT_CONV][1]
    if extra % 4:
        raise LoRAFileError(f"{file_name}: its input conv takes {extra} extra channels, not whole 4-channel latents")
    return lora, extra // 4
