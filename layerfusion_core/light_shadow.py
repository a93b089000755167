"""The light-and-shadow layers: what the object did to its surroundings, as layers an editor flattens
back into the composite (plain torch).

LayerFusion gives a transparent foreground F (straight alpha a), a background B and a harmonised
composite C. ``C - over(F, B)`` is the object's effect on what is around it: its shadow (darker) and
the light it reflects (lighter). Written between the background and the foreground, the visible
stack is ``a*F + (1 - a) * (B ⊕ L)``, so where a < 1 the layers must bring B to the target

    T = clip((C - a*F) / (1 - a), 0, 1)

and where the foreground is opaque (a == 1 at 8 bits) nothing below it shows: the layers are
neutral there. Where a == 0, T == C: away from the object the stack is the composite itself.

The signed change is split in two layers, each in a blend mode every flattener here has:

- ``shadow``, Multiply: ``T / B`` where T < B, white (neutral) elsewhere;
- ``light``, Addition (Photoshop's Linear Dodge, OpenRaster's ``svg:plus``): ``T - B`` where T > B,
  black (neutral) elsewhere.

Each is opaque where it changes some channel and transparent elsewhere (its alpha only marks where
it acts: its pixels are neutral there too). Multiply and Addition were measured against the
editors (GIMP 2.10.34, Krita 5.1.5; the slow editor test repeats it): the flattened PSD and ORA give
back the 8-bit composite within 1/255 where a < 1, exactly where a == 0. One Linear Light layer
(``B + 2L - 1``) also came within 1/255 where a < 1, but was off by 1/255 where a == 0, and has no
OpenRaster ``svg:`` name (Krita reads its own ``krita:linear light`` only); Grain Merge
(``B + L - 1/2``) cannot hold a change over 1/2 and missed by up to 126/255.

Where T is clipped the composite cannot be reached by any layer below the foreground (the
composite differs from the foreground where the foreground is nearly opaque, e.g. a recoloured
soft edge): `light_and_shadow` says where.

Several objects (K foregrounds of one set, bottom first) stack above the two layers; over() applied
object by object is one "over" of their union: premultiplied colour ``P`` and what shows through
``c = (1 - a_1) ... (1 - a_K)`` (`coverage`), so ``T = clip((C - P) / c, 0, 1)`` where c > 0, the
background where some object is opaque. With one object, ``P = a*F`` and ``c = 1 - a``: the same
operations, the same values as above.

Two flatteners, two colour spaces (``space``):

- ``"srgb"``: PSD and OpenRaster editors and `layered_files.merged` blend the stored 8-bit sRGB values.
- ``"linear"``: ComfyUI's Create Layered Image (``comfy_extras/compositor_blend.py``) composites
  "normal", "multiply" and "linear-dodge" in linear light, on each layer's 8-bit sRGB values
  decoded: there the target and the layers are worked out in linear light, then sRGB-encoded.

Every input is first taken to 8 bits, as the flattener sees it (each layer is stored in 8 bits).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

SRGB, LINEAR = "srgb", "linear"
SPACES = (SRGB, LINEAR)
SHADOW, LIGHT = "shadow", "light"
REACH_TOLERANCE = 0.5 / 255.0  # how far from the composite (sRGB) the exact stack may be where it counts as reachable
Objects = torch.Tensor | Sequence[torch.Tensor]  # one object [..., H, W, 4], or several (each so), bottom first


@dataclasses.dataclass(frozen=True)
class Blend:
    """A blend mode by each flattener's name for it."""

    name: str
    psd_key: bytes  # Photoshop's layer record blend mode key
    ora_op: str  # OpenRaster stack.xml composite-op
    comfy: str  # a ComfyUI LAYERS item's blend_mode (comfy_extras/compositor_blend.py)


NORMAL = Blend("normal", b"norm", "svg:src-over", "normal")
MULTIPLY = Blend("multiply", b"mul ", "svg:multiply", "multiply")
ADD = Blend("add", b"lddg", "svg:plus", "linear-dodge")
BLENDS = (NORMAL, MULTIPLY, ADD)
LAYER_BLENDS = {SHADOW: MULTIPLY, LIGHT: ADD}  # the light-and-shadow layers, bottom first


def eight_bit(values: torch.Tensor) -> torch.Tensor:
    """``values`` (any shape, floats in [0, 1]) rounded to the nearest of 256 levels."""
    return (values.float().clamp(0, 1) * 255.0).round() / 255.0


def srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values (any shape) in linear light."""
    return torch.where(c <= 0.04045, c / 12.92, ((c.clamp_min(0) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    """Linear-light values (any shape) sRGB-encoded."""
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp_min(0) ** (1.0 / 2.4) - 0.055)


def _objects(foreground: Objects) -> list[torch.Tensor]:
    objects = [foreground] if isinstance(foreground, torch.Tensor) else list(foreground)
    if not objects:
        raise ValueError("light and shadow: no object (expected one or more [..., H, W, 4] foregrounds)")
    return objects


def coverage(foreground: Objects) -> tuple[torch.Tensor, torch.Tensor]:
    """The objects (``foreground``: one ``[..., H, W, 4]`` with straight alpha, or several, bottom
    first) as one layer: ``(premultiplied colour [..., H, W, 3], clear [..., H, W, 1])``, ``clear``
    being the share of what is below that still shows, 0 where some object is opaque. Over()
    object by object: ``P = a_k*F_k + (1 - a_k)*P`` and ``c = (1 - a_k)*c``, from ``a_1*F_1`` and
    ``1 - a_1``."""
    first, *rest = _objects(foreground)
    alpha = first[..., 3:]
    colour, clear = alpha * first[..., :3], 1.0 - alpha
    for layer in rest:
        alpha = layer[..., 3:]
        colour, clear = alpha * layer[..., :3] + (1.0 - alpha) * colour, (1.0 - alpha) * clear
    return colour, clear


def shows_through(foreground: Objects) -> torch.Tensor:
    """``[..., H, W]``: where no object of ``foreground`` (`coverage`) is opaque at 8 bits, so the
    layers below them show."""
    return coverage([eight_bit(layer) for layer in _objects(foreground)])[1][..., 0] > 0


def target(foreground: Objects, background: torch.Tensor, composite: torch.Tensor) -> torch.Tensor:
    """What the layers below the objects must show: ``T`` ``[..., H, W, 3]``.

    ``foreground`` ``[..., H, W, 4]`` (straight alpha), or several such objects bottom first;
    ``background`` and ``composite`` ``[..., H, W, 3]``, in one colour space. ``(C - P) / c``
    (`coverage`; one object: ``(C - a*F) / (1 - a)``) clipped to [0, 1] where c > 0, the background
    where some object is opaque (nothing below the objects shows there).
    """
    colour, clear = coverage(foreground)
    opaque = clear <= 0.0
    wanted = (composite - colour) / torch.where(opaque, torch.ones_like(clear), clear)
    return torch.where(opaque, background, wanted.clamp(0, 1))


def over(foreground: Objects, below: torch.Tensor) -> torch.Tensor:
    """``foreground`` ``[..., H, W, 4]`` (straight alpha; or several, bottom first, one over the
    next) over the opaque ``below`` ``[..., H, W, 3]``."""
    colour, clear = coverage(foreground)
    return colour + clear * below


def shadow_and_light(background: torch.Tensor, wanted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Multiply and Addition layers that take ``background`` to ``wanted`` (both ``[..., H, W,
    3]``, one colour space): ``(shadow, light)``, each ``[..., H, W, 4]``, colour in that space,
    alpha 1 where the layer changes some channel and 0 elsewhere (colour neutral there)."""
    darker, lighter = wanted < background, wanted > background
    factor = torch.where(darker, wanted / background.clamp_min(1e-12), torch.ones_like(wanted))
    added = torch.where(lighter, wanted - background, torch.zeros_like(wanted))
    return _marked(factor, darker), _marked(added, lighter)


def _marked(colour: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """``colour`` ``[..., 3]`` with alpha ``[..., 1]``: 1 where any channel ``acts``."""
    return torch.cat([colour, acts.any(dim=-1, keepdim=True).to(colour.dtype)], dim=-1)


def light_and_shadow(foreground: Objects, background: torch.Tensor, composite: torch.Tensor,
                     space: str = SRGB) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``shadow`` and ``light`` layers for one flattener, as stored: sRGB-encoded 8-bit values.

    ``foreground`` ``[..., H, W, 4]`` (straight alpha), or the K objects of a set, bottom first, each
    so (the layers go below all of them: what all the objects did to their surroundings);
    ``background`` and ``composite`` ``[..., H, W, 3]``, sRGB-encoded in [0, 1]. ``space``: where
    the flattener blends (`SRGB` or `LINEAR`).
    Returns ``(shadow, light, reachable)``: two ``[..., H, W, 4]`` layers (straight alpha, 0 or 1;
    neutral colour where transparent) and ``reachable`` ``[..., H, W]``: where the stack, before the
    layers' 8-bit rounding, is within half a level of the 8-bit composite in every channel (everywhere
    but where the target was clipped; where an object is opaque, where the objects are the composite).
    """
    if space not in SPACES:
        raise ValueError(f"space {space!r}: expected one of {', '.join(SPACES)}")
    objects = [eight_bit(layer) for layer in _objects(foreground)]
    bg, comp = eight_bit(background), eight_bit(composite)
    if space == LINEAR:
        objects = [torch.cat([srgb_to_linear(layer[..., :3]), layer[..., 3:]], dim=-1) for layer in objects]
        bg, comp = srgb_to_linear(bg), srgb_to_linear(comp)
    wanted = target(objects, bg, comp)
    shadow, light = shadow_and_light(bg, wanted)
    stack = over(objects, wanted)  # before the layers' own 8-bit rounding
    reachable = ((linear_to_srgb(stack) if space == LINEAR else stack) - eight_bit(composite)).abs() <= REACH_TOLERANCE
    if space == LINEAR:
        shadow = torch.cat([linear_to_srgb(shadow[..., :3]), shadow[..., 3:]], dim=-1)
        light = torch.cat([linear_to_srgb(light[..., :3]), light[..., 3:]], dim=-1)
    return _stored(shadow, 1.0), _stored(light, 0.0), reachable.all(dim=-1)


def _stored(layer: torch.Tensor, neutral: float) -> torch.Tensor:
    """``layer`` ``[..., 4]`` at 8 bits; where its colour rounds to ``neutral`` in every channel it does
    nothing, so it is transparent there."""
    colour = eight_bit(layer[..., :3])
    acts = (layer[..., 3:] > 0) & (colour != neutral).any(dim=-1, keepdim=True)
    colour = torch.where(acts, colour, torch.full_like(colour, neutral))
    return torch.cat([colour, acts.to(colour.dtype)], dim=-1)
