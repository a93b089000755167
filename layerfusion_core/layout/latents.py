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
# Marks a LATENT as a LayerFusion batch (value: the number of layered sets). ComfyUI's samplers
# copy a latent's keys to their output, so the mark travels with the batch; Split removes it.
LAYERED_KEY = "layerfusion_sets"


def empty_layered_latent(sets: int, width: int, height: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """An all-zero LATENT of ``sets`` layered sets: samples ``[3 * sets, 4, height // 8, width // 8]``."""
    if sets < 1:
        raise ValueError(f"sets must be at least 1, got {sets}")
    if width % LATENT_SCALE or height % LATENT_SCALE:
        raise ValueError(f"width and height must be multiples of {LATENT_SCALE}, got {width}x{height}")
    samples = torch.zeros(
        [STREAMS_PER_SET * sets, LATENT_CHANNELS_SDXL, height // LATENT_SCALE, width // LATENT_SCALE], device=device
    )
    return {"samples": samples, LAYERED_KEY: sets}


def is_layered(latent: dict[str, Any]) -> bool:
    """True for a LATENT made by LayerFusion Empty Latent that still has 3 rows per set."""
    sets = latent.get(LAYERED_KEY)
    return isinstance(sets, int) and latent["samples"].shape[0] == STREAMS_PER_SET * sets


def stream_selection(latent: dict[str, Any], stream: Stream | None) -> torch.Tensor | None:
    """Row indices ``[N]`` of ``stream`` in a LayerFusion LATENT; None (every row) for a plain
    latent or ``stream`` None."""
    if stream is None or not is_layered(latent):
        return None
    return torch.arange(int(stream), latent["samples"].shape[0], STREAMS_PER_SET)


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
        part = {key: _rows(value, stream, batch_size) for key, value in latent.items() if key != LAYERED_KEY}
        part["samples"] = samples[int(stream) :: STREAMS_PER_SET].clone()
        out[stream] = part
    return out


def stream_inputs(latent: dict[str, Any], images: torch.Tensor, stream: Stream | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent rows ``[N, 4, h, w]`` and images ``[N, H, W, C]`` of ``stream`` (every row of a
    plain latent). ``images`` may hold every row of the latent or only the chosen stream's."""
    samples = latent["samples"]
    rows = stream_selection(latent, stream)
    if rows is not None:
        if images.shape[0] == samples.shape[0]:
            images = images[rows]
        samples = samples[rows]
    if images.shape[0] != samples.shape[0]:
        raise ValueError(f"has {images.shape[0]} images for {samples.shape[0]} latent rows")
    return samples, images


def with_photo(latent: dict[str, Any], photo: torch.Tensor, region: torch.Tensor | None = None) -> dict[str, Any]:
    """A LayerFusion LATENT whose background and blend rows start from ``photo`` and which carries
    ComfyUI's inpainting ``noise_mask`` (``[3N, 1, h, w]``, 1 = generate): 0 on the background rows
    (the sampler keeps them at the photo noised to each step), ``region`` on the blend rows (1 where
    the composite may change; everywhere when None), 1 on the foreground rows.

    ``photo`` ``[1 or N, C, h, w]`` on the latent's grid; ``region`` a MASK ``[1 or N, 8h, 8w]`` in
    pixels, averaged over each latent cell (the caller checks sizes and batches). The foreground
    rows keep the latent's samples; an earlier ``noise_mask`` is replaced."""
    samples = latent["samples"]
    sets = samples.shape[0] // STREAMS_PER_SET
    photo = photo.to(samples).expand(sets, *photo.shape[1:])
    out_samples = samples.clone()
    out_samples[int(Stream.BG)::STREAMS_PER_SET] = photo
    out_samples[int(Stream.BLEND)::STREAMS_PER_SET] = photo
    mask = torch.ones(samples.shape[0], 1, *samples.shape[-2:], dtype=torch.float32, device=samples.device)
    mask[int(Stream.BG)::STREAMS_PER_SET] = 0.0
    if region is not None:
        cells = torch.nn.functional.interpolate(region.to(mask)[:, None], size=tuple(samples.shape[-2:]), mode="area")
        mask[int(Stream.BLEND)::STREAMS_PER_SET] = cells.expand(sets, *cells.shape[1:])
    return {**latent, "samples": out_samples, "noise_mask": mask}
