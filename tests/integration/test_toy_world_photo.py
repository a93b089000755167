"""LayerFusion Background on the toy world's trained files (slow tier): the first case of
`python -m layerfusion_dev.toy_world.photo_measure`, its background picture as the photo, LayerFusion
on against blending off from the same noise, through the pack's nodes and ComfyUI's sampler. The full
measurement (16 seeds) is in the README."""

from __future__ import annotations

import pytest

from layerfusion_dev.testnodes import toy_models
from support.toy import NEEDS_FILES, toy_with_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, NEEDS_FILES]
STEPS = 12


@pytest.fixture(scope="module")
def runs():
    from layerfusion_dev.toy_world import measure, photo_measure

    toy, settings = toy_with_settings()
    case = measure.cases(1)[0]
    hold = dict(toy_models.HOLD_SETTINGS)
    on, off = (photo_measure.run_photo(toy, case, settings, hold, steps=STEPS, cfg=5.0, blend=blend) for blend in (True, False))
    return case, on, off, photo_measure.photo_claims(case, on, hold), photo_measure.photo_claims(case, off, hold)


def test_the_photo_is_kept_exactly_where_the_method_says(runs):
    case, on, off, on_claims, off_claims = runs
    assert on.bg_exact and off.bg_exact, case  # the background rows: the encoded photo, bit for bit
    assert on_claims["outside_exact"] == 1.0  # the composite outside the band: the photo's latent, bit for bit
    assert 0.0 < float((on.band == 0).float().mean()) < 1.0, "the band must leave part of the photo held"
    assert on_claims["unbanded_acts"] == 0.0  # so no light-and-shadow there


def test_the_object_goes_where_the_foreground_is_with_its_light_and_shadow_next_to_it(runs):
    case, _on, _off, on_claims, off_claims = runs
    # measured at 12 steps: 0.051 on, 0.002 off (the README's 16 cases at 20 steps: 0.133 against 0.063)
    assert on_claims["blend_iou"] > off_claims["blend_iou"] + 0.02, (case, on_claims["blend_iou"], off_claims["blend_iou"])
    assert on_claims["near_acts"] > 0.5 and on_claims["near_acts"] > on_claims["far_acts"] + 0.2, on_claims
