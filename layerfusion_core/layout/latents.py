"""ComfyUI LATENT dictionaries in the three-stream layout (plain functions, no ComfyUI import).

A LATENT is a dict with ``samples`` ``[B, C, h, w]`` and optional per-row entries (``noise_mask``
``[B or 1, 1, H, W]``, ``batch_index`` list of B ints); other keys are carried along unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from .streams import THREE_STREAMS, Layout, Stream

LATENT_CHANNELS_SDXL: int = 4
LATENT_SCALE: int = 8  # pixels per latent cell in SDXL's VAE
# Marks a LATENT as a LayerFusion batch (value: the number of layered sets). ComfyUI's samplers
# copy a latent's keys to their output, so the mark travels with the batch; Split removes it.
LAYERED_KEY = "layerfusion_sets"
FOREGROUNDS_KEY = "layerfusion_foregrounds"  # foreground rows per set (K); absent: 1


def empty_layered_latent(sets: int, width: int, height: int, device: torch.device | str = "cpu",
                         layout: Layout = THREE_STREAMS) -> dict[str, Any]:
    """An all-zero LATENT of ``sets`` layered sets: samples ``[per_set * sets, 4, height // 8, width // 8]``."""
    if sets < 1:
        raise ValueError(f"sets must be at least 1, got {sets}")
    if width % LATENT_SCALE or height % LATENT_SCALE:
        raise ValueError(f"width and height must be multiples of {LATENT_SCALE}, got {width}x{height}")
    samples = torch.zeros(
        [layout.per_set * sets, LATENT_CHANNELS_SDXL, height // LATENT_SCALE, width // LATENT_SCALE], device=device
    )
    return {"samples": samples, LAYERED_KEY: sets, FOREGROUNDS_KEY: layout.foregrounds}


def layout_of(latent: dict[str, Any]) -> Layout:
    """The layout a LayerFusion LATENT was made with (one foreground when it does not say)."""
    foregrounds = latent.get(FOREGROUNDS_KEY, 1)
    return Layout(foregrounds if isinstance(foregrounds, int) else 1)


def is_layered(latent: dict[str, Any]) -> bool:
    """True for a LATENT made by LayerFusion Empty Latent that still has its rows per set."""
    sets = latent.get(LAYERED_KEY)
    return isinstance(sets, int) and latent["samples"].shape[0] == layout_of(latent).per_set * sets


def stream_selection(latent: dict[str, Any], stream: Stream | None) -> torch.Tensor | None:
    """Row indices of ``stream`` in a LayerFusion LATENT (set by set); None (every row) for a plain
    latent or ``stream`` None."""
    if stream is None or not is_layered(latent):
        return None
    return layout_of(latent).rows(latent["samples"].shape[0], stream)


def _rows(value: Any, rows: torch.Tensor, batch_size: int) -> Any:
    """The ``rows`` of a per-row LATENT entry; broadcast entries pass unchanged."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch_size:
        return value[rows.to(value.device)]
    if isinstance(value, list) and len(value) == batch_size:
        return [value[int(r)] for r in rows]
    return value


def split_layered_latent(latent: dict[str, Any]) -> dict[Stream, dict[str, Any]]:
    """A LATENT of ``N * per_set`` rows (its `layout_of`) -> one LATENT per stream (N rows; the
    foregrounds' ``N * K``, set by set). Raises ValueError when the batch is not whole layered sets."""
    samples, layout = latent["samples"], layout_of(latent)
    batch_size = samples.shape[0]
    layout.sets(batch_size)
    out: dict[Stream, dict[str, Any]] = {}
    for stream in Stream:
        rows = layout.rows(batch_size, stream)
        part = {key: _rows(value, rows, batch_size) for key, value in latent.items() if key not in (LAYERED_KEY, FOREGROUNDS_KEY)}
        part["samples"] = samples[rows.to(samples.device)].clone()
        out[stream] = part
    return out


def stream_inputs(latent: dict[str, Any], images: torch.Tensor, stream: Stream | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent rows ``[R, 4, h, w]`` and images ``[R, H, W, C]`` of ``stream`` (every row of a
    plain latent). ``images`` may hold every row of the latent or only the chosen stream's."""
    samples = latent["samples"]
    rows = stream_selection(latent, stream)
    if rows is not None:
        if images.shape[0] == samples.shape[0]:
            images = images[rows.to(images.device)]
        samples = samples[rows.to(samples.device)]
    if images.shape[0] != samples.shape[0]:
        raise ValueError(f"has {images.shape[0]} images for {samples.shape[0]} latent rows")
    return samples, images


def with_photo(latent: dict[str, Any], photo: torch.Tensor, region: torch.Tensor | None = None) -> dict[str, Any]:
    """A LayerFusion LATENT whose background and blend rows start from ``photo`` and which carries
    ComfyUI's inpainting ``noise_mask`` (``[B, 1, h, w]``, 1 = generate): 0 on the background rows
    (the sampler keeps them at the photo noised to each step), ``region`` on the blend rows (1 where
    the composite may change; everywhere when None), 1 on the foreground rows.

    ``photo`` ``[1 or N, C, h, w]`` on the latent's grid; ``region`` a MASK ``[1 or N, 8h, 8w]`` in
    pixels, averaged over each latent cell (the caller checks sizes and batches). The foreground
    rows keep the latent's samples; an earlier ``noise_mask`` is replaced."""
    samples, layout = latent["samples"], layout_of(latent)
    sets = layout.sets(samples.shape[0])
    bg, blend = (layout.rows(samples.shape[0], s).to(samples.device) for s in (Stream.BG, Stream.BLEND))
    photo = photo.to(samples).expand(sets, *photo.shape[1:])
    out_samples = samples.clone()
    out_samples[bg] = photo
    out_samples[blend] = photo
    mask = torch.ones(samples.shape[0], 1, *samples.shape[-2:], dtype=torch.float32, device=samples.device)
    mask[bg] = 0.0
    if region is not None:
        cells = torch.nn.functional.interpolate(region.to(mask)[:, None], size=tuple(samples.shape[-2:]), mode="area")
        mask[blend] = cells.expand(sets, *cells.shape[1:])
    return {**latent, "samples": out_samples, "noise_mask": mask}
