"""ComfyUI LATENT dictionaries in the three-stream layout (plain functions, no ComfyUI import).

A LATENT is a dict with ``samples`` ``[B, C, h, w]`` and optional per-row entries (``noise_mask``
``[B or 1, 1, H, W]``, ``batch_index`` list of B ints); other keys are carried along unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from .streams import STREAMS_PER_SET, Stream, set_count

LATENT_CHANNELS_SDXL: int = 4
LATENT_SCALE: int = 8  # pixels per latent cell in SDXL's VAE


def empty_layered_latent(sets: int, width: int, height: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """An all-zero LATENT of ``sets`` layered sets: samples ``[3 * sets, 4, height // 8, width // 8]``."""
    if sets < 1:
        raise ValueError(f"sets must be at least 1, got {sets}")
    if width % LATENT_SCALE or height % LATENT_SCALE:
        raise ValueError(f"width and height must be multiples of {LATENT_SCALE}, got {width}x{height}")
    samples = torch.zeros(
        [STREAMS_PER_SET * sets, LATENT_CHANNELS_SDXL, height // LATENT_SCALE, width // LATENT_SCALE], device=device
    )
    return {"samples": samples}


def _rows(value: Any, stream: Stream, batch_size: int) -> Any:
    """The rows of a per-row LATENT entry that belong to ``stream``; broadcast entries pass unchanged."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch_size:
        return value[int(stream) :: STREAMS_PER_SET]
    if isinstance(value, list) and len(value) == batch_size:
        return value[int(stream) :: STREAMS_PER_SET]
    return value


def split_layered_latent(latent: dict[str, Any]) -> dict[Stream, dict[str, Any]]:
    """A LATENT of 3N rows -> one LATENT of N rows per stream.

    Raises ValueError when the batch is not a whole number of layered sets.
    """
    samples = latent["samples"]
    batch_size = samples.shape[0]
    set_count(batch_size)
    out: dict[Stream, dict[str, Any]] = {}
    for stream in Stream:
        part = {key: _rows(value, stream, batch_size) for key, value in latent.items()}
        part["samples"] = samples[int(stream) :: STREAMS_PER_SET].clone()
        out[stream] = part
    return out
