"""Compose the README's picture from the latest `make demo` outputs in ./output/LayerFusion:
foreground over a checkerboard, background, blend, and the masks, side by side, labelled with
where the weights came from.

    .venv/bin/python -m layerfusion_dev.readme_picture "tiny random-weight model" docs/demo.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
PANEL = 256


def latest(prefix: str) -> Image.Image:
    files = sorted((REPO / "output" / "LayerFusion").glob(f"{prefix}_*.png"))
    if not files:
        raise SystemExit(f"no output/LayerFusion/{prefix}_*.png: run `make demo` first")
    return Image.open(files[-1])


def checkerboard(size: int, square: int = 16) -> Image.Image:
    board = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(board)
    for y in range(0, size, square):
        for x in range(0, size, square):
            if (x // square + y // square) % 2:
                draw.rectangle([x, y, x + square - 1, y + square - 1], fill=(189, 189, 189))
    return board


def main(source: str, target: str) -> int:
    fg = latest("fg").convert("RGBA").resize((PANEL, PANEL))
    fg_panel = checkerboard(PANEL)
    fg_panel.paste(fg, (0, 0), fg)
    panels = [("foreground (RGBA)", fg_panel), ("background", latest("bg").convert("RGB").resize((PANEL, PANEL))),
              ("blend", latest("blend").convert("RGB").resize((PANEL, PANEL))),
              ("structure | soft | hard", latest("masks").convert("RGB").resize((3 * PANEL, PANEL)))]
    width = sum(p.width for _, p in panels) + 10 * (len(panels) + 1)
    sheet = Image.new("RGB", (width, PANEL + 60), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    x = 10
    for label, panel in panels:
        sheet.paste(panel, (x, 30))
        draw.text((x, 10), label, fill=(230, 230, 230))
        x += panel.width + 10
    draw.text((10, PANEL + 38), f"make demo, real pipeline, weights: {source}", fill=(255, 210, 120))
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(target)
    sys.stdout.write(f"wrote {target}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
