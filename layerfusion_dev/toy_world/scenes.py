"""The toy world's scenes: seeded synthetic layered pictures and their prompts (torch only, no ComfyUI).

A scene is one object (a shape in a colour, soft edges) over one background (plain, stripes or
checks in a colour). Each scene comes as its three layers:

- ``fg``: the object alone, RGBA with straight alpha (colour everywhere, alpha = the silhouette);
- ``bg``: the background alone, RGB;
- ``blend``: the composite, where the object also casts a soft shadow (down and to the right) and
  tints its surroundings a little with its own colour, so that harmonisation has something to do.

Pictures are ``[B, C, H, W]`` in [0, 1], ``SIZE`` px (the latent is ``SIZE // 8``). Prompts follow one
small grammar: ``a red circle``, ``blue stripes background`` (``plain blue background``), and
``a red circle on blue stripes background``.
"""

from __future__ import annotations

import dataclasses
import math

import torch

SIZE = 256
OBJECT_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.14, 0.12), "yellow": (0.93, 0.82, 0.12), "green": (0.14, 0.66, 0.22), "blue": (0.13, 0.30, 0.86),
}
BACKGROUND_COLOURS: dict[str, tuple[float, float, float]] = {
    "blue": (0.20, 0.36, 0.80), "green": (0.24, 0.62, 0.30), "white": (0.90, 0.90, 0.88),
    "purple": (0.52, 0.28, 0.66), "orange": (0.94, 0.55, 0.16), "grey": (0.50, 0.50, 0.50),
}
SHAPES = ("circle", "square", "triangle")
PATTERNS = ("plain", "stripes", "checks")
PERIOD = 64  # px: stripes and checks (8 latent pixels)
SHADOW_OFFSET = 12  # px, down and to the right
SHADOW_DEPTH = 0.45  # fraction of light the shadow takes away at its centre
TINT = 0.18  # how much of the object's colour reaches its surroundings
EDGE = 2.5  # px: softness of the object's edge


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    colour: str
    shape: str
    bg_colour: str
    pattern: str
    cx: float  # object centre and radius, in px
    cy: float
    radius: float

    @property
    def fg_prompt(self) -> str:
        return f"a {self.colour} {self.shape}"

    @property
    def bg_prompt(self) -> str:
        return background_prompt(self.bg_colour, self.pattern)

    @property
    def blend_prompt(self) -> str:
        return f"{self.fg_prompt} on {self.bg_prompt}"


@dataclasses.dataclass(frozen=True)
class Scenes:
    specs: list[SceneSpec]
    fg: torch.Tensor  # [B, 4, H, W]: RGB (straight) + alpha
    bg: torch.Tensor  # [B, 3, H, W]
    blend: torch.Tensor  # [B, 3, H, W]


def background_prompt(colour: str, pattern: str) -> str:
    return f"plain {colour} background" if pattern == "plain" else f"{colour} {pattern} background"


def all_prompts() -> list[str]:
    """Every prompt of the grammar (foregrounds, backgrounds, composites), sorted; plus the empty prompt."""
    fgs = [f"a {c} {s}" for c in OBJECT_COLOURS for s in SHAPES]
    bgs = [background_prompt(c, p) for c in BACKGROUND_COLOURS for p in PATTERNS]
    blends = [f"{f} on {b}" for f in fgs for b in bgs]
    return sorted({"", *fgs, *bgs, *blends})


def draw_specs(count: int, gen: torch.Generator) -> list[SceneSpec]:
    """``count`` random scenes; the background's colour is never the object's."""
    specs = []
    colours, bg_colours = list(OBJECT_COLOURS), list(BACKGROUND_COLOURS)
    for _ in range(count):
        pick = torch.randint(0, 1 << 30, (8,), generator=gen).tolist()
        colour = colours[pick[0] % len(colours)]
        choices = [c for c in bg_colours if c != colour]
        radius = 36 + (pick[4] % 1000) / 1000 * 28  # 36-64 px
        margin = radius + 8
        cx = margin + (pick[5] % 1000) / 1000 * (SIZE - 2 * margin)
        cy = margin + (pick[6] % 1000) / 1000 * (SIZE - 2 * margin)
        specs.append(SceneSpec(colour, SHAPES[pick[1] % len(SHAPES)], choices[pick[2] % len(choices)],
                               PATTERNS[pick[3] % len(PATTERNS)], cx, cy, radius))
    return specs


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    return coords[None, :].expand(size, size), coords[:, None].expand(size, size)  # x, y


def silhouette(spec: SceneSpec, size: int = SIZE, dx: float = 0.0, dy: float = 0.0, edge: float = EDGE) -> torch.Tensor:
    """The object's alpha ``[H, W]`` in [0, 1] (soft edge ``edge`` px), optionally shifted by (dx, dy)."""
    x, y = _grid(size)
    x, y = x - spec.cx - dx, y - spec.cy - dy
    r = spec.radius
    if spec.shape == "circle":
        dist = torch.sqrt(x**2 + y**2) - r
    elif spec.shape == "square":
        half = r * 0.85
        dist = torch.maximum(x.abs(), y.abs()) - half
    else:  # an upward triangle inscribed in the circle of radius r: the largest distance past its three edges
        dist = torch.full_like(x, -math.inf)
        for angle in (30.0, 150.0, 270.0):  # outward normals (y up)
            nx, ny = math.cos(math.radians(angle)), -math.sin(math.radians(angle))
            dist = torch.maximum(dist, x * nx + y * ny - r * 0.5)
    return torch.sigmoid(-dist / (edge / 2.0))


def background(colour: str, pattern: str, size: int = SIZE) -> torch.Tensor:
    """``[3, H, W]``: the pattern alternates the colour with a lighter tint of it."""
    base = torch.tensor(BACKGROUND_COLOURS[colour]).view(3, 1, 1)
    light = base + (1.0 - base) * 0.45
    x, y = _grid(size)
    if pattern == "plain":
        mask = torch.zeros(size, size)
    elif pattern == "stripes":
        mask = ((x // (PERIOD / 2)) % 2).float()
    else:
        mask = (((x // (PERIOD / 2)) + (y // (PERIOD / 2))) % 2).float()
    return base * (1 - mask) + light * mask


def _blur(planes: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``[B, H, W]`` planes, computed at a quarter of the size (the results are smooth)."""
    small = torch.nn.functional.avg_pool2d(planes[:, None], 4)
    sigma = sigma / 4
    radius = int(3 * sigma) + 1
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = torch.nn.functional.conv2d(small, kernel.view(1, 1, 1, -1), padding=(0, radius))
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    return torch.nn.functional.interpolate(out, size=planes.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def render(specs: list[SceneSpec], size: int = SIZE) -> Scenes:
    colour = torch.tensor([OBJECT_COLOURS[s.colour] for s in specs]).view(-1, 3, 1, 1)
    alpha = torch.stack([silhouette(s, size) for s in specs])
    shadow = _blur(torch.stack([silhouette(s, size, SHADOW_OFFSET, SHADOW_OFFSET) for s in specs]), 8.0) * SHADOW_DEPTH
    glow = _blur(alpha, 14.0) * TINT
    bg = torch.stack([background(s.bg_colour, s.pattern, size) for s in specs])
    lit = bg * (1 - shadow[:, None]) * (1 - glow[:, None]) + colour * glow[:, None]
    blend = (lit * (1 - alpha[:, None]) + colour * alpha[:, None]).clamp(0, 1)
    fg = torch.cat([colour.expand(-1, 3, size, size), alpha[:, None]], dim=1)
    return Scenes(specs, fg, bg, blend)


def object_pixels(rgb: torch.Tensor, colour: str, tolerance: float = 0.25) -> torch.Tensor:
    """``[B, H, W]`` bool: pixels within ``tolerance`` (max over channels) of an object colour."""
    target = torch.tensor(OBJECT_COLOURS[colour], dtype=rgb.dtype).view(1, 3, 1, 1)
    return (rgb - target).abs().amax(dim=1) < tolerance
