"""Independent flattenings of a layer stack, pixel by pixel in floats, written from the blend modes'
definitions (not from the pack's code), and a lit scene to flatten.

- `flatten_file`: what a PSD or OpenRaster editor does with 8-bit layers, on their sRGB values: the
  separable blend ``B(Cb, Cs)`` mixed in by the backdrop's alpha, then source-over (the W3C
  Compositing and Blending model; Photoshop, GIMP and Krita blend 8-bit sRGB images so).
- `flatten_layers_value`: what current ComfyUI's Create Layered Image does with a LAYERS value
  (``comfy_extras/nodes_compositor.py`` and ``compositor_blend.py``): items stable-sorted by
  ``z_index``, each layer's colour and alpha taken to 8 bits and decoded to linear light, on a
  transparent canvas; "normal" is source-over, "multiply" and "linear-dodge" blend in linear light
  and mix in by the layer's alpha where there is a backdrop, keeping the backdrop's alpha.
- `lit_scene`: a background and a composite in which the foreground casts a shadow and reflects a
  warm light, made by an "over" in the colour space asked for; `lit_objects`: the same with several
  objects, one over the next.
"""

from __future__ import annotations

import numpy as np
import torch

FILE_BLENDS = {"norm": "normal", "svg:src-over": "normal", "mul ": "multiply", "svg:multiply": "multiply",
               "lddg": "add", "svg:plus": "add"}  # PSD keys and ORA ops -> the blend they name


def _blend(mode: str, under: float, top: float) -> float:
    if mode == "normal":
        return top
    if mode == "multiply":
        return under * top
    if mode == "add":
        return min(1.0, under + top)
    raise ValueError(f"no blend mode {mode!r} here")


def flatten_file(layers) -> np.ndarray:
    """The visible ``layers`` (`support.layered_readers.ReadLayer`, bottom first) flattened: ``[H, W, 4]``
    floats (straight alpha). A blend mode the file names but this does not know fails."""
    visible = [(FILE_BLENDS[layer.blend], layer.pixels.astype(np.float64) / 255.0) for layer in layers if layer.visible]
    height, width = layers[0].pixels.shape[:2]
    out = np.zeros((height, width, 4))
    for y in range(height):
        for x in range(width):
            colour, alpha = [0.0, 0.0, 0.0], 0.0
            for mode, pixels in visible:
                top_alpha = pixels[y, x, 3]
                if top_alpha == 0:
                    continue
                source = [(1 - alpha) * pixels[y, x, c] + alpha * _blend(mode, colour[c], pixels[y, x, c]) for c in range(3)]
                new_alpha = top_alpha + alpha * (1 - top_alpha)
                colour = [(source[c] * top_alpha + colour[c] * alpha * (1 - top_alpha)) / new_alpha for c in range(3)]
                alpha = new_alpha
            out[y, x] = [*colour, alpha]
    return out


def to_linear(c: float) -> float:
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def to_srgb(c: float) -> float:
    return c * 12.92 if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055


def flatten_layers_value(doc: dict) -> np.ndarray:
    """A LAYERS value flattened as Create Layered Image does it: ``[H, W, 4]`` floats, sRGB colour and alpha."""
    width, height = doc["canvas"]
    frames = []
    for item in sorted(doc["layers"], key=lambda item: item.get("z_index", 0)):
        assert "mask" not in item and item.get("opacity", 1.0) == 1.0  # not used by LayerFusion's items
        for row in item["image"]:
            if not item.get("visible", True):
                continue
            pixels = np.rint(row.double().numpy().clip(0, 1) * 255.0) / 255.0
            alpha = pixels[..., 3] if pixels.shape[-1] == 4 else np.ones(pixels.shape[:2])
            frames.append((item.get("blend_mode", "normal"), pixels[..., :3], alpha))
    out = np.zeros((height, width, 4))
    for y in range(height):
        for x in range(width):
            colour, alpha = [0.0, 0.0, 0.0], 0.0
            for mode, rgb, layer_alpha in frames:
                top, a = [to_linear(v) for v in rgb[y, x]], layer_alpha[y, x]
                if a == 0:
                    continue
                if mode == "normal":
                    new_alpha = a + (1 - a) * alpha
                    colour = top if alpha == 0 else [colour[c] + a / new_alpha * (top[c] - colour[c]) for c in range(3)]
                    alpha = new_alpha
                elif alpha > 0:
                    assert mode in ("multiply", "linear-dodge"), mode
                    blended = [colour[c] * top[c] if mode == "multiply" else colour[c] + top[c] for c in range(3)]
                    colour = [blended[c] * a + colour[c] * (1 - a) for c in range(3)]
            out[y, x] = [*(to_srgb(min(max(v, 0.0), 1.0)) for v in colour), alpha]
    return out


def _lit_below(height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(background, below)`` ``[H, W, 3]`` float64: a random background, and that background
    darkened by a soft shadow to the lower right and lit by a warm glow to the upper left."""
    background = torch.rand(height, width, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij")

    def blob(cy: float, cx: float, radius: float) -> torch.Tensor:
        return torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / radius ** 2)[..., None]

    shadow = 1 - 0.7 * blob(0.75 * height, 0.7 * width, 0.3 * width)
    glow = blob(0.2 * height, 0.2 * width, 0.25 * width) * torch.tensor([0.35, 0.25, 0.1], dtype=torch.float64)
    return background, (background * shadow + glow).clamp(0, 1)


def lit_scene(foreground: torch.Tensor, seed: int = 0, space: str = "srgb") -> tuple[torch.Tensor, torch.Tensor]:
    """``(background, composite)``, each ``[1, H, W, 3]``, for ``foreground`` ``[H, W, 4]``: a random
    background; the composite is the foreground over that background darkened by a soft shadow to
    the lower right and lit by a warm glow to the upper left, composed in ``space`` ("srgb" or
    "linear": then the over runs on decoded values) with the foreground at 8 bits."""
    background, below = _lit_below(*foreground.shape[:2], seed)
    fg = torch.round(foreground.double().clamp(0, 1) * 255) / 255  # as a file stores it
    a = fg[..., 3:]
    if space == "linear":
        decode = np.vectorize(to_linear)
        lin = torch.from_numpy(decode(fg[..., :3].numpy())), torch.from_numpy(decode(below.numpy()))
        composite = torch.from_numpy(np.vectorize(to_srgb)((a * lin[0] + (1 - a) * lin[1]).clamp(0, 1).numpy()))
    else:
        composite = a * fg[..., :3] + (1 - a) * below
    return background[None].float(), composite[None].float()


def lit_objects(objects: torch.Tensor, seed: int = 0, space: str = "srgb") -> tuple[torch.Tensor, torch.Tensor]:
    """`lit_scene` for a set of several objects, ``objects`` ``[K, H, W, 4]`` (bottom first, each at 8
    bits): ``(background, composite)``, each ``[1, H, W, 3]``, the composite each object "over" the
    shadowed and lit background in turn, the bottom one first, in ``space``."""
    background, below = _lit_below(*objects.shape[1:3], seed)
    decode, encode = (np.vectorize(to_linear), np.vectorize(to_srgb)) if space == "linear" else (np.asarray, np.asarray)
    out = torch.from_numpy(decode(below.numpy()))
    for layer in objects:
        fg = torch.round(layer.double().clamp(0, 1) * 255) / 255  # as a file stores it
        a = fg[..., 3:]
        out = a * torch.from_numpy(decode(fg[..., :3].numpy())) + (1 - a) * out
    composite = torch.from_numpy(encode(out.clamp(0, 1).numpy()))
    return background[None].float(), composite[None].float()
