"""Convert the FLUX LayerDiffuse `TransparentVAE.pth` (a pickled state dict) to two safetensors
files the nodes load: the transparent decoder and the latent-offset encoder.

The pickle is read only with ``torch.load(..., weights_only=True)``: PyTorch's restricted unpickler,
which builds tensors and plain containers and refuses anything else (an arbitrary pickled object,
a reduce that would call a function) before running it. The file must hold a flat dict of tensors
named ``decoder.*``, ``encoder.*`` (and ``sd_vae.*``, the FLUX VAE, which is dropped); the decoder
and encoder tensors are checked against the FLUX layout (names and shapes of this pack's modules)
and written without their prefixes, in their own dtype.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import torch

from .loading import expected_shapes, layout_problem
from .networks import LatentOffsetEncoder, TransparentDecoder
from .variants import FLUX, TransparentVariant

log = logging.getLogger(__name__)

PARTS: dict[str, type[torch.nn.Module]] = {"decoder.": TransparentDecoder, "encoder.": LatentOffsetEncoder}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
DROPPED_PREFIX = "sd_vae."  # the FLUX VAE itself: ComfyUI loads ae.safetensors instead


class ConvertError(Exception):
    """A conversion that did not happen; the message is one line that says why."""


@dataclasses.dataclass(frozen=True)
class Converted:
    decoder: str  # path of the written decoder file
    encoder: str  # path of the written encoder file
    dropped: int  # how many tensors were left out (sd_vae.*)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` dict pickled in ``path``, read with ``weights_only=True`` only."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's UnpicklingError, a zip or pickle format error: all refusals
        raise ConvertError(f"{name}: refused by torch.load(weights_only=True), so it is not a plain state dict of "
                           f"tensors (this converter never unpickles anything else): {_reason(err)}") from None
    if not isinstance(state, dict):
        raise ConvertError(f"{name}: holds a {type(state).__name__}, expected a flat dict of tensors (a state dict)")
    not_tensors = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConvertError(f"{name}: {len(not_tensors)} entries are not named tensors (e.g. {not_tensors[0]!r}); "
                           "expected a flat dict of tensors (a state dict)")
    return state


def _reason(err: Exception) -> str:
    """The telling line of torch's (multi-line, coloured) refusal, e.g. the GLOBAL it refused."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch")
    lines = [_ANSI.sub("", line).strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line and not line.startswith(boilerplate)]
    telling = [line for line in lines if "GLOBAL" in line]
    return (telling or lines or [type(err).__name__])[0]


def split_parts(name: str, state: dict[str, torch.Tensor], variant: TransparentVariant = FLUX) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    """The decoder's and the encoder's tensors without their prefixes, checked against the layout
    of ``variant``; and how many ``sd_vae.*`` tensors were dropped. Any other tensor is an error."""
    parts: dict[str, dict[str, torch.Tensor]] = {prefix: {} for prefix in PARTS}
    dropped, foreign = 0, []
    for key, tensor in state.items():
        prefix = next((p for p in PARTS if key.startswith(p)), None)
        if prefix is not None:
            parts[prefix][key[len(prefix):]] = tensor
        elif key.startswith(DROPPED_PREFIX):
            dropped += 1
        else:
            foreign.append(key)
    if foreign:
        raise ConvertError(f"{name}: {len(foreign)} tensors are neither decoder.*, encoder.* nor sd_vae.* (e.g. {foreign[0]!r}); "
                           f"is this LayerDiffuse's FLUX {os.path.basename(name)}?")
    for prefix, module_cls in PARTS.items():
        got = {k: tuple(v.shape) for k, v in parts[prefix].items()}
        problem = layout_problem(expected_shapes(module_cls, variant), got, f"{variant.name} {prefix.rstrip('.')}")
        if problem is not None:
            raise ConvertError(f"{name}: its {prefix}* tensors do not fit the {variant.name} transparent "
                               f"{prefix.rstrip('.')}: {problem}")
    return parts, dropped


def convert(path: str, out_dir: str, variant: TransparentVariant = FLUX, overwrite: bool = False) -> Converted:
    """Read ``path`` (weights_only), check it, and write ``variant.decoder_file`` and
    ``variant.encoder_file`` into ``out_dir`` (created if needed). Raises `ConvertError`."""
    from safetensors.torch import save_file

    name = os.path.basename(path)
    parts, dropped = split_parts(name, read_state_dict(path), variant)
    targets = {"decoder.": os.path.join(out_dir, variant.decoder_file), "encoder.": os.path.join(out_dir, variant.encoder_file)}
    existing = [t for t in targets.values() if os.path.exists(t)]
    if existing and not overwrite:
        raise ConvertError(f"{existing[0]} already exists; pass --overwrite to replace it")
    os.makedirs(out_dir, exist_ok=True)
    for prefix, target in targets.items():
        tensors = {k: v.contiguous() for k, v in sorted(parts[prefix].items())}
        tmp = target + ".tmp"
        save_file(tensors, tmp, metadata={"format": "pt", "converted_from": name, "variant": variant.name})
        os.replace(tmp, target)
        log.info("wrote %s (%d tensors)", target, len(tensors))
    return Converted(targets["decoder."], targets["encoder."], dropped)
