"""Two foregrounds in one run on the toy world's trained files (slow tier): the first case of
`python -m layerfusion_dev.toy_world.pair_measure` with LayerFusion on and with placement hints (the first
object's box the left half, the second's the right half; `steer` off and on), through the pack's nodes and
ComfyUI's sampler.
The full measurement (16 seeds, with blending off) is in the README."""

from __future__ import annotations

import pytest

from support.toy import NEEDS_FILES, toy_with_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, NEEDS_FILES]
STEPS = 12


@pytest.fixture(scope="module")
def runs():
    from layerfusion_dev.toy_world import pair_measure

    toy, settings = toy_with_settings()
    case = pair_measure.pair_cases(1)[0]
    out = {kind: pair_measure.run_pair(toy, case, settings, kind, steps=STEPS, cfg=5.0) for kind in ("on", "hints", "steer")}
    return case, out, {kind: pair_measure.pair_claims(case, run) for kind, run in out.items()}


def test_each_foreground_has_its_own_masks_and_the_hints_keep_them_apart(runs):
    case, out, claims = runs
    assert out["on"].fg_rgba.shape[0] == 2 and out["on"].hard.shape[0] == 2
    assert claims["on"]["mask_overlap"] < 1.0  # two objects, two masks
    assert claims["hints"]["mask_overlap"] == 0.0, case  # disjoint places at strength 1: disjoint hard masks
    left = out["hints"].hard[:, :, : out["hints"].hard.shape[-1] // 2]
    assert (left[1] <= 0.5).all() and (out["hints"].hard[0][:, left.shape[-1]:] <= 0.5).all()


def test_with_hints_the_composites_objects_are_in_their_places_more_often(runs):
    case, _out, claims = runs
    assert claims["hints"]["in_place"] > claims["on"]["in_place"], (case, claims)


def test_steering_puts_each_foregrounds_own_object_in_its_place_in_its_colour(runs):
    case, out, claims = runs
    objects = out["steer"].fg_rgba[..., 3] > 0.5  # [2, H, W]
    half = objects.shape[-1] // 2
    assert objects[0].sum() > 0 and objects[1].sum() > 0, case
    assert objects[0][:, :half].sum() >= 0.9 * objects[0].sum() and objects[1][:, half:].sum() >= 0.9 * objects[1].sum(), case
    assert claims["steer"]["fg_colour"] >= claims["hints"]["fg_colour"], (case, claims)
