"""The prompts of a layered set -> one batched conditioning for its layout ([fg_1..fg_K, bg, blend];
plain functions)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

CLIP_END_TOKEN = 49407


def blend_prompt(fg: str | Sequence[str], bg: str, blend: str) -> str:
    """The blend stream's prompt: as given, or ``"<fg>, <bg>"`` when empty (``"<fg_1>, .., <fg_K>, <bg>"``
    for several foregrounds)."""
    fgs = [fg] if isinstance(fg, str) else list(fg)
    return blend if blend.strip() else ", ".join([*(f.strip() for f in fgs), bg.strip()])


def eos_index(tokens: Mapping[str, Sequence[Sequence]]) -> int:
    """Index of the first end-of-text token in the first 77-token chunk of a ComfyUI CLIP
    tokenization (``{"l": [[(token, weight), ...], ...], "g": ...}``): 1 + the prompt's token count."""
    for name in ("l", "g"):
        if name in tokens and tokens[name]:
            for i, item in enumerate(tokens[name][0]):
                token = item[0] if isinstance(item, (tuple, list)) else item
                if token == CLIP_END_TOKEN:
                    return i
    raise ValueError("no end-of-text token in the first chunk of this tokenization")


def equalize_tokens(conds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``[1, T_i, C]`` tensors -> the same length by repeating whole 77-token chunks (to the least
    common multiple of their lengths, as ComfyUI's own cond concatenation does): cross-attention
    over repeated keys and values gives the same result."""
    length = math.lcm(*(c.shape[1] for c in conds))
    return [c.repeat(1, length // c.shape[1], 1) for c in conds]


def stack_streams(parts: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond ``[1, T, C]``, pooled ``[1, P]``) per row of a set, in layout order -> ``[R, L, C]``, ``[R, P]``."""
    conds = equalize_tokens([c for c, _ in parts])
    return torch.cat(conds, dim=0), torch.cat([p for _, p in parts], dim=0)
