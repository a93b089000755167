"""The user's own background in the toy world (issue 25): LayerFusion Background on against blending off.

Each case is a seeded prompt triple of the toy grammar whose background picture (the world's own
``scenes.background``) is the photo: VAE-encoded, put into the layered latent by LayerFusion
Background, sampled by ComfyUI's own sampler from the same noise twice: LayerFusion on (the toy
settings; the composite held to the photo outside the band) and blending off (independent streams:
nothing holds the composite). Per case:

- ``blend_iou``: the composite's object (pixels near the object colour) against the foreground's
  alpha > 0.5 (IoU): the object is put where the foreground's is;
- ``bg_exact``: the background rows equal the encoded photo exactly (1 or 0);
- ``outside_exact``: share of the composite's latent elements outside the band that equal the photo's
  exactly (on only: blending off has no band);
- ``near_acts`` / ``far_acts``: share of pixels where the light-and-shadow layers act (8 bits), next
  to the object (alpha < 0.1, within ``dilate_px`` of alpha > 0.5) and far from it (more than
  ``dilate_px + feather_px`` away, where the foreground is fully transparent at 8 bits: where it is
  not, the layers also undo the foreground's stray alpha, which is the foreground's, not the
  composite's); ``near_level``: their mean change next to the object, in 8-bit levels;
  ``unbanded_acts`` (on only): the same share outside the band, where the foreground is fully
  transparent (0 by construction: the composite there is the photo).

    python -m layerfusion_dev.toy_world.photo_measure [--seeds 16] [--out bench/toy_world/photo]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..paths import REPO
from ..testnodes import toy_models
from . import scenes
from .measure import DEFAULTS, FIRST_SEED, SIZE, Case, Toy, case_arguments, cases, files_record, start_host
from .pixels import checker, iou, near, save_grid, summarise

log = logging.getLogger("layerfusion.toy_world")
CLAIMS = ("blend_iou", "bg_exact", "outside_exact", "near_acts", "near_level", "far_acts", "unbanded_acts")
BETTER_LOW = {"far_acts"}


@dataclasses.dataclass
class PhotoRun:
    photo: torch.Tensor  # [H, W, 3]: the photo as VAE Decode shows it (the background stream's picture)
    fg_rgba: torch.Tensor  # [H, W, 4]
    blend: torch.Tensor  # [H, W, 3]
    bg_exact: bool
    outside_exact: float
    band: torch.Tensor | None  # [H, W]


def photo_of(case: Case) -> torch.Tensor:
    """The case's background picture ``[1, H, W, 3]`` (ComfyUI's IMAGE layout)."""
    return scenes.background(case.bg_colour, case.pattern, SIZE).movedim(0, -1)[None]


@torch.no_grad()
def run_photo(toy: Toy, case: Case, settings: dict[str, Any], hold: dict[str, Any], *, steps: int, cfg: float,
              blend: bool) -> PhotoRun:
    import comfy.sample

    from layerfusion.layerfusion_core.patching.layerfusion import fusion_patch
    from layerfusion.nodes.background import LayerFusionBackground
    from layerfusion.nodes.fusion import LayerFusionApply, LayerFusionConditioning
    from layerfusion.nodes.latent import LayerFusionEmptyLatent

    positive, negative = LayerFusionConditioning.execute(toy.clip, *case.prompts, "").result
    photo = {"samples": toy.vae.encode(photo_of(case))}
    latent = LayerFusionEmptyLatent.execute(width=SIZE, height=SIZE, sets=1).result[0]
    switches = {} if blend else {"blend_blend": False, "blend_fg": False, "blend_bg": False}
    model = LayerFusionApply.execute(toy.fg_model, **{**settings, **switches}).result[0]
    model, latent = LayerFusionBackground.execute(model, latent, photo, hold_composite=True, hold_from=0.0, **hold).result
    noise = comfy.sample.prepare_noise(latent["samples"], case.seed)
    samples = comfy.sample.sample(model, noise, steps, cfg, "dpmpp_2m", "karras", positive, negative, latent["samples"],
                                  noise_mask=latent["noise_mask"], seed=case.seed, disable_pbar=True)
    pictures = toy.vae.decode(samples)
    rgba = toy_models.transparent_decode(samples[0:1], pictures[0:1])[0]
    band = fusion_patch(model).records.record.band
    outside_exact = float("nan")
    if band is not None:
        outside = (band[0] == 0).expand_as(samples[2])
        outside_exact = (samples[2][outside] == photo["samples"][0][outside]).float().mean().item() if outside.any() else 1.0
        band = F.interpolate(band[None], scale_factor=SIZE // band.shape[-1], mode="nearest")[0, 0]
    return PhotoRun(pictures[1], rgba, pictures[2], bool(torch.equal(samples[1], photo["samples"][0])), outside_exact, band)


def _grown(mask: torch.Tensor, px: int) -> torch.Tensor:
    return F.max_pool2d(mask.float()[None, None], 2 * px + 1, stride=1, padding=px)[0, 0] > 0


def photo_claims(case: Case, run: PhotoRun, hold: dict[str, Any]) -> dict[str, float]:
    from layerfusion.layerfusion_core import light_shadow

    alpha = run.fg_rgba[..., 3]
    obj = alpha > 0.5
    shadow, light, _reachable = light_shadow.light_and_shadow(run.fg_rgba, run.photo, run.blend)
    acts = (shadow[..., 3] > 0) | (light[..., 3] > 0)
    level = (light_shadow.target(light_shadow.eight_bit(run.fg_rgba), light_shadow.eight_bit(run.photo),
                                 light_shadow.eight_bit(run.blend)) - light_shadow.eight_bit(run.photo)).abs().amax(-1) * 255
    beside = _grown(obj, hold["dilate_px"]) & (alpha < 0.1)
    clear = light_shadow.eight_bit(alpha) == 0
    far = ~_grown(obj, hold["dilate_px"] + hold["feather_px"]) & clear
    unbanded = (run.band == 0) & clear if run.band is not None else None
    colour = scenes.OBJECT_COLOURS[case.colour]
    return {
        "blend_iou": iou(near(run.blend, colour, 0.25), obj),
        "bg_exact": float(run.bg_exact),
        "outside_exact": run.outside_exact,
        "near_acts": acts[beside].float().mean().item() if beside.any() else float("nan"),
        "near_level": level[beside].mean().item() if beside.any() else float("nan"),
        "far_acts": acts[far].float().mean().item() if far.any() else float("nan"),
        "unbanded_acts": acts[unbanded].float().mean().item() if unbanded is not None and unbanded.any() else float("nan"),
    }


def picture(runs: list[tuple[PhotoRun, PhotoRun]], path: Path) -> None:
    """Rows: one case; columns: the photo, the foreground over a checkerboard, the composite (on), its
    light-and-shadow change (grey = none), the band (on); the composite with blending off."""
    from layerfusion.layerfusion_core import light_shadow

    rows = []
    for on, off in runs:
        change = light_shadow.target(on.fg_rgba, on.photo, on.blend) - on.photo
        band = (on.band if on.band is not None else torch.zeros(on.photo.shape[:2])).unsqueeze(-1).expand(-1, -1, 3)
        rows.append([on.photo, checker(on.fg_rgba), on.blend, 0.5 + 2 * change, band, off.blend])
    save_grid(rows, path)


def table(on: dict[str, tuple[float, float]], off: dict[str, tuple[float, float]], count: int) -> str:
    lines = [f"| ({count} seeds, mean ± sd) | LayerFusion on | blending off |", "|---|---|---|"]
    for claim in CLAIMS:
        (m_on, s_on), (m_off, s_off) = on[claim], off[claim]
        off_text = "n/a" if m_off != m_off else f"{m_off:.3f} ± {s_off:.3f}"
        lines.append(f"| {claim} | {m_on:.3f} ± {s_on:.3f} | {off_text} |")
    return "\n".join(lines)


def measure(toy: Toy, count: int, steps: int, cfg: float, settings: dict[str, Any], hold: dict[str, Any],
            picture_path: Path | None = None, on_case=None, first_seed: int = FIRST_SEED) -> dict[str, Any]:
    on_rows, off_rows, shown = [], [], []
    drawn = cases(count, first_seed)
    for case in drawn:
        on = run_photo(toy, case, settings, hold, steps=steps, cfg=cfg, blend=True)
        off = run_photo(toy, case, settings, hold, steps=steps, cfg=cfg, blend=False)
        on_rows.append(photo_claims(case, on, hold))
        off_rows.append(photo_claims(case, off, hold))
        if len(shown) < 6:
            shown.append((on, off))
        if on_case is not None:
            on_case(case, on_rows[-1], off_rows[-1])
    if picture_path is not None:
        picture(shown, picture_path)
    return {"cases": [dataclasses.asdict(c) for c in drawn], "on": on_rows, "off": off_rows,
            "summary_on": summarise(on_rows, CLAIMS), "summary_off": summarise(off_rows, CLAIMS)}


def main(argv: list[str] | None = None) -> int:
    parser = case_arguments(__doc__, REPO / "bench" / "toy_world" / "photo")
    args = parser.parse_args(argv)
    start_host()
    settings = {**DEFAULTS, **toy_models.APPLY_SETTINGS}
    hold = dict(toy_models.HOLD_SETTINGS)
    toy = Toy(args.checkpoint, args.lora)
    from tqdm import tqdm

    bar = tqdm(total=args.seeds, desc="toy world: your own background", unit="seed")
    result = measure(toy, args.seeds, args.steps, args.cfg, settings, hold, args.out / "photo_on_off.png",
                     lambda *_: bar.update(), args.first_seed)
    bar.close()
    result.update(settings=settings, hold=hold, steps=args.steps, cfg=args.cfg, first_seed=args.first_seed,
                  files=files_record(args.checkpoint, args.lora))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    text = table(result["summary_on"], result["summary_off"], args.seeds)
    (args.out / "table.md").write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
