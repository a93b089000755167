"""LayerFusion Background on the real ComfyUI sampler with the tiny SDXL model: the background rows end
at the photo exactly, the composite equals the photo outside the band exactly, blending off equals
independent runs, and bad input is refused by name before sampling."""

from __future__ import annotations

import comfy.patcher_extension
import pytest
import torch

from layerfusion.layerfusion_core.layout.latents import empty_layered_latent
from layerfusion.layerfusion_core.patching.hook_points import HookPointError
from layerfusion.layerfusion_core.patching.layerfusion import fusion_patch
from layerfusion.layerfusion_core.patching.options import FUSION_WRAPPER_KEY
from layerfusion.nodes.background import LayerFusionBackground
from layerfusion.nodes.fusion import LayerFusionApply, LayerFusionConditioning

STEPS, SIZE, SETS = 4, 16, 2
ALL_OFF = dict(blend_blend=False, blend_fg=False, blend_bg=False)


@pytest.fixture(scope="module")
def conds(tiny):
    return LayerFusionConditioning.execute(tiny.clip, "a red ball", "a meadow", "", "blurry").result


def fused(tiny, **options):
    args = dict(d=10.0, prior_at=0.8, prior_mode="prior_pass", blend_start=0.0, blend_end=1.0, bg_mode="bg_from_bl",
                blend_blend=True, blend_fg=True, blend_bg=True)
    return LayerFusionApply.execute(tiny.model, **{**args, **options}).result[0]


def photo(photos=1, seed=5):
    return {"samples": torch.randn(photos, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 4}


def with_background(model, photos=1, hold=True, dilate_px=8, feather_px=8, mask=None):
    latent = empty_layered_latent(SETS, SIZE * 8, SIZE * 8)
    return LayerFusionBackground.execute(model, latent, photo(photos), hold, 0.0, dilate_px, feather_px, mask=mask).result


def sample(model, latent, conds, noise_rows=None, cfg=5.0):
    import comfy.sample

    samples = latent["samples"]
    noise = torch.randn(3 * SETS, *samples.shape[1:], generator=torch.Generator().manual_seed(1))
    noise = noise[noise_rows] if noise_rows is not None else noise
    return comfy.sample.sample(model, noise, STEPS, cfg, "euler", "normal", conds[0], conds[1], samples,
                               noise_mask=latent.get("noise_mask"), seed=0, disable_pbar=True)


@pytest.mark.parametrize("photos", [1, pytest.param(SETS, marks=pytest.mark.slow)])
def test_background_rows_end_at_the_photo_and_the_composite_outside_the_band_too(tiny, conds, photos):
    model, latent = with_background(fused(tiny), photos)
    out = sample(model, latent, conds)
    image = photo(photos)["samples"].expand(SETS, -1, -1, -1)
    assert torch.equal(out[1::3], image)  # exactly: not up to the sampler's float rounding
    band = fusion_patch(model).records.record.band
    assert band is not None and band.shape == (SETS, SIZE, SIZE)
    outside = (band == 0)[:, None].expand_as(image)
    assert 0 < int(outside[:, 0].sum()) < band.numel(), "the test needs a band that covers part of the picture"
    assert torch.equal(out[2::3][outside], image[outside])
    assert not torch.allclose(out[2::3][~outside], image[~outside])  # inside it the composite is generated


def test_the_exact_hold_only_removes_float_rounding(tiny, conds):
    model, latent = with_background(fused(tiny))
    captured = []

    def capture(executor, *args, **kwargs):  # inside the pack's OUTER_SAMPLE wrapper: the sampler's own result
        out = executor(*args, **kwargs)
        captured.append(out.clone())
        return out

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "test.capture", capture)
    exact = sample(model, latent, conds)
    (raw,) = captured
    band = fusion_patch(model).records.record.band
    held = torch.zeros_like(exact, dtype=torch.bool)
    held[1::3] = True
    held[2::3] = (band == 0)[:, None].expand(-1, 4, -1, -1)
    assert torch.equal(exact[~held], raw[~held])  # nothing else changes
    assert torch.allclose(raw[held], exact[held], rtol=1e-5, atol=1e-6)
    assert not torch.equal(raw[held], exact[held])  # ComfyUI's own result is off by float rounding (measured here)


@pytest.mark.parametrize("broken", [pytest.param("denoise_mask_function", marks=pytest.mark.slow), "outer_sample"])
def test_the_guard_fires_when_a_hold_hook_does_not_run(tiny, conds, broken):
    model, latent = with_background(fused(tiny))
    broken_model = model.clone()
    if broken == "outer_sample":
        broken_model.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, FUSION_WRAPPER_KEY)
        match = "OUTER_SAMPLE wrapper did not run"
    else:
        def no_mask_hook(executor, guider, sigmas, extra_args, *args, **kwargs):  # a sampler that never calls it
            model_options = {k: v for k, v in extra_args["model_options"].items() if k != "denoise_mask_function"}
            return executor(guider, sigmas, {**extra_args, "model_options": model_options}, *args, **kwargs)

        broken_model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, "test.no_mask_hook", no_mask_hook)
        match = "never called the run's denoise_mask_function"
    with pytest.raises(HookPointError, match=match):
        sample(broken_model, latent, conds)


@pytest.mark.slow
def test_without_the_hold_the_composite_is_free_and_the_background_still_held(tiny, conds):
    model, latent = with_background(fused(tiny), hold=False)
    out = sample(model, latent, conds)
    assert torch.equal(out[1::3], photo()["samples"].expand(SETS, -1, -1, -1))
    assert fusion_patch(model).records.record.band is None
    assert (out[2::3] != latent["samples"][2::3]).float().mean() > 0.99  # generated everywhere


@pytest.mark.slow
def test_a_region_mask_keeps_the_photo_outside_it_for_the_whole_run(tiny, conds):
    region = torch.zeros(1, SIZE * 8, SIZE * 8)
    region[:, :64, :] = 1.0  # the top half may change
    model, latent = with_background(fused(tiny), hold=False, mask=region)
    out = sample(model, latent, conds)
    assert torch.equal(out[2::3, :, SIZE // 2:], latent["samples"][2::3, :, SIZE // 2:])
    assert not torch.equal(out[2::3, :, :SIZE // 2], latent["samples"][2::3, :, :SIZE // 2])


def test_blending_off_equals_independent_runs_with_the_photo(tiny, conds):
    model, latent = with_background(fused(tiny, **ALL_OFF))
    out = sample(model, latent, conds)
    for row in range(3 * SETS):
        stream = row % 3
        single = {"samples": latent["samples"][row:row + 1], "noise_mask": latent["noise_mask"][row:row + 1]}
        cond = [[[c[0][0][stream:stream + 1], {"pooled_output": c[0][1]["pooled_output"][stream:stream + 1]}]] for c in conds]
        alone = sample(tiny.model, single, cond, noise_rows=[row])
        assert torch.allclose(out[row], alone[0], rtol=0, atol=1e-5 * alone.abs().max().item()), row


def test_bad_input_is_refused_by_name(tiny, conds):
    model = fused(tiny)
    latent = empty_layered_latent(SETS, SIZE * 8, SIZE * 8)

    def refused(match, **kw):
        args = dict(model=model, latent=latent, photo=photo(), hold_composite=True, hold_from=0.0, dilate_px=8, feather_px=8)
        with pytest.raises(ValueError, match=match):
            LayerFusionBackground.execute(**{**args, **kw})

    refused(r"LayerFusion Background: input 'photo': is 64x64 pixels, the latent 128x128", photo={"samples": torch.zeros(1, 4, 8, 8)})
    refused(r"input 'photo': has 3 images, the latent 2 layered set\(s\). Give one photo", photo=photo(3))
    refused(r"input 'mask': is 64x128, the photo 128x128", mask=torch.ones(1, 128, 64))
    refused(r"input 'mask': has 3 masks, the latent 2", mask=torch.ones(3, 128, 128))
    refused(r"input 'latent': is not a LayerFusion batch", latent={"samples": torch.zeros(6, 4, SIZE, SIZE)})
    refused(r"input 'model': has no LayerFusion Apply", model=tiny.model)
    nan = torch.zeros(1, 4, SIZE, SIZE)
    nan[0, 0, 0, 0] = float("nan")
    refused(r"input 'photo': contains 1 NaN", photo={"samples": nan})
    held, _ = with_background(model)
    with pytest.raises(ValueError, match="LayerFusion Background: the model holds the composite to a photo, but the sampler's latent"):
        sample(held, empty_layered_latent(SETS, SIZE * 8, SIZE * 8), conds)
