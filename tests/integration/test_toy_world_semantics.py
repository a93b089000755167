"""The method's claims on the toy world's trained files (the fast semantic tier): the first two seeded
cases of `make toy-measure`, LayerFusion on against blending off (the same noise), through the pack's
own nodes and ComfyUI's sampler, at fewer steps. The full measurement (16 seeds, every claim) is
`make toy-measure`; its tables are in the README. Asserted here: what the toy world must give for the
measurement to mean anything (prompt control, a foreground object on a transparent layer); with the toy
model's own LayerFusion Apply settings, what the README's table shows working (the hard mask on the
foreground's object, the composite's object where the foreground's is); and, as a strict expected
failure in the slow tier, what it shows failing with the defaults (the hard mask on the object): the
day it holds, this test says so."""

from __future__ import annotations

import pytest
import torch

from layerfusion_dev.testnodes import toy_models
from support.toy import NEEDS_FILES

pytestmark = [pytest.mark.integration, NEEDS_FILES]
CASES = 2
STEPS = 12
MASK_MARGIN = 0.3  # measured at 12 steps: 0.73 against 0.25, 0.92 against 0.33


@pytest.fixture(scope="module")
def toy():
    from layerfusion_dev.toy_world import measure

    return measure.Toy()


@pytest.fixture(scope="module")
def off_runs(toy):
    """Blending off: independent streams, the same for any LayerFusion Apply settings (the invariant the
    integration tests prove), so both sets of settings below share these runs."""
    from layerfusion_dev.toy_world import measure

    return [toy.run(case, measure.DEFAULTS, steps=STEPS, cfg=5.0, blend=False) for case in measure.cases(CASES)]


def on_and_off(toy, off_runs, settings: dict) -> list:
    from layerfusion_dev.toy_world import measure

    out = []
    for case, off in zip(measure.cases(CASES), off_runs):
        on = toy.run(case, settings, steps=STEPS, cfg=5.0, blend=True)
        out.append((case, on, off, measure.claims(case, on), measure.claims(case, off)))
    return out


@pytest.fixture(scope="module")
def runs(toy, off_runs):
    from layerfusion_dev.toy_world import measure

    return on_and_off(toy, off_runs, measure.DEFAULTS)


@pytest.fixture(scope="module")
def toy_settings_runs(toy, off_runs):
    from layerfusion_dev.toy_world import measure

    return on_and_off(toy, off_runs, {**measure.DEFAULTS, **toy_models.APPLY_SETTINGS})


def test_streams_follow_their_prompts_with_blending_off(off_runs):
    """Prompt control: the foreground's object has the prompted colour, the background stream the prompted background."""
    from layerfusion_dev.toy_world import measure

    assert [measure.claims(case, off)["prompt"] for case, off in zip(measure.cases(CASES), off_runs)] == [1.0] * CASES


def test_foreground_object_is_opaquer_than_its_surroundings(toy_settings_runs):
    """The foreground LoRA gives the object alpha (weakly, as measured: its objects come out half transparent)."""
    from layerfusion_dev.toy_world import scenes

    for case, on, off, *_ in toy_settings_runs:
        for run in (on, off):
            target = torch.tensor(scenes.OBJECT_COLOURS[case.colour])
            obj = (run.fg_rgb - target).abs().amax(dim=-1) < 0.25
            alpha = run.fg_rgba[..., 3]
            assert obj.float().mean() > 0.01, f"{case}: no object of the prompted colour in the foreground"
            assert alpha[obj].mean() > alpha[~obj].mean() + 0.08, f"{case}: alpha {alpha[obj].mean():.2f} on the object"


@pytest.mark.slow  # the defaults' own runs: the slow tier keeps make test in its time
@pytest.mark.xfail(strict=True, reason="measured in the toy world (README): the hard mask misses the foreground's object")
def test_hard_mask_covers_the_foreground_object(runs):
    assert all(on_claims["mask_iou"] > 0.3 for *_, on_claims, _ in runs)


def test_with_the_toy_settings_the_hard_mask_is_on_the_foreground_object(toy_settings_runs):
    """norm_quantile and the late prior (README): the hard mask is bright on the foreground's object (alpha > 0.5)
    and dark away from it (alpha < 0.1). Its IoU with alpha > 0.5 stays low (README: 0.15-0.20) because the
    under-trained LoRA's objects are half transparent: in the first case alpha > 0.5 is 0.6 % of the picture."""
    for case, on, *_ in toy_settings_runs:
        alpha = on.fg_rgba[..., 3]
        on_object, away = on.hard[alpha > 0.5].mean().item(), on.hard[alpha < 0.1].mean().item()
        assert on_object > away + MASK_MARGIN, f"{case}: hard mask {on_object:.2f} on the object, {away:.2f} away from it"


def test_with_the_toy_settings_the_composite_object_follows_the_foreground(toy_settings_runs):
    """The composite's object lies more where the foreground's alpha is than with blending off (same noise)."""
    for case, _, _, on_claims, off_claims in toy_settings_runs:
        assert on_claims["blend_iou"] > off_claims["blend_iou"], f"{case}: {on_claims['blend_iou']:.3f} on, {off_claims['blend_iou']:.3f} off"
