"""LayerFusion LayerDiffuse Conditional (the official sequential pipelines) and Flatten Alpha on the
real ComfyUI sampler, with random stand-ins of the conditional files for the tiny model."""

from __future__ import annotations

import pytest
import torch

from layerfusion.layerfusion_core.patching.layerdiffuse_conditional import ConditionSizeError
from layerfusion.layerfusion_core.patching.model_info import unet_shapes
from layerfusion.layerfusion_core.weights import lora_files
from layerfusion.nodes.layerdiffuse import LayerFusionFlattenAlpha, LayerFusionLayerDiffuseCond
from layerfusion_dev.testnodes import standins
from support.sampling import fixed_cond

STEPS = 4


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    import folder_paths

    folder = tmp_path_factory.mktemp("cond_models") / "layer_model"
    paths = standins.write_conditional_standins(folder, standins.unet_shapes(tiny.model))
    paths.update(standins.write_standins(folder, standins.unet_shapes(tiny.model), rank=2))
    (folder / "my_attention.safetensors").write_bytes(paths[standins.ATTN_FILE].read_bytes())  # a LoRA by another name
    folder_paths.add_model_folder_path("layer_model", str(folder))
    return paths


def condition(seed: int, size: int = 8) -> dict:
    return {"samples": torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(seed))}


def cond_node(model, name, *conditions, stop_at=1.0, weight=1.0):
    extra = {"condition_2": conditions[1]} if len(conditions) > 1 else {}
    return LayerFusionLayerDiffuseCond.execute(model, fixed_cond(2), fixed_cond(3), conditions[0], name, weight, stop_at, **extra).result


def sample(model, positive, negative, size=8, start=None, last=None, latent=None, add_noise=True):
    import comfy.sample

    noise = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(1))
    latent = torch.zeros_like(noise) if latent is None else latent
    return comfy.sample.sample(model, noise if add_noise else torch.zeros_like(noise), STEPS, 5.0, "euler", "normal",
                               positive, negative, latent, seed=0, disable_pbar=True, start_step=start, last_step=last,
                               force_full_denoise=last is None)


class InputProbe:
    """Records what the UNet's first conv gets and weighs, per call."""

    def __init__(self, model):
        self.conv = model.model.diffusion_model.input_blocks[0][0]
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self):
        self.hook = self.conv.register_forward_pre_hook(lambda mod, args: self.calls.append((args[0].clone(), mod.weight.detach().clone())))
        return self

    def __exit__(self, *exc):
        self.hook.remove()


def test_the_input_conv_is_widened_and_the_condition_reaches_the_unet(tiny, files):
    model, positive, negative = cond_node(tiny.model, "layer_xl_fgble2bg.safetensors", condition(5), condition(6))
    with InputProbe(tiny.model) as probe:
        out = sample(model, positive, negative)
    assert not torch.allclose(out, sample(tiny.model, fixed_cond(2), fixed_cond(3)), atol=1e-3)
    x, weight = probe.calls[0]
    assert x.shape[1] == 12 and weight.shape[1] == 12  # 4 latent + 2 x 4 condition channels
    expected = torch.cat([tiny.model.model.process_latent_in(c["samples"]) for c in (condition(5), condition(6))], dim=1)
    assert all(torch.allclose(row, expected[0]) for row in x[:, 4:])  # cond and uncond rows both carry it


def test_stop_at_switches_back_to_the_plain_model_at_the_right_step(tiny, files):
    import comfy.samplers

    name = "layer_xl_fg2ble.safetensors"
    model, positive, negative = cond_node(tiny.model, name, condition(5), stop_at=0.5)
    with InputProbe(tiny.model) as probe:
        out = sample(model, positive, negative)
    sampling = tiny.model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", STEPS)[:-1].tolist()
    stop = next(i for i, s in enumerate(sigmas) if s <= sampling.percent_to_sigma(0.5))
    patched = [bool(w[:, 4:].abs().sum() > 0) for _, w in probe.calls]
    assert patched == [True] * stop + [False] * (STEPS - stop)
    from layerfusion_dev.testnodes import tiny_sdxl

    original = tiny_sdxl.build_unet("depth1", seed=0).model.diffusion_model.input_blocks[0][0].weight
    assert all(not torch.equal(w[:, :4], original) for _, w in probe.calls[:stop])
    assert all(torch.equal(w[:, :4], original) for _, w in probe.calls[stop:])  # the checkpoint's own weights again
    # the same as patched sampling to `stop`, then the plain model from there (what needed two samplers before)
    first = sample(*cond_node(tiny.model, name, condition(5)), last=stop)
    rest = sample(tiny.model, fixed_cond(2), fixed_cond(3), start=stop, latent=first, add_noise=False)
    assert torch.allclose(out, rest, rtol=1e-4, atol=1e-4 * out.abs().max().item())


def test_clear_errors(tiny, files):
    with pytest.raises(ValueError, match="input 'model_name': my_attention.safetensors: its input conv is not widened"):
        cond_node(tiny.model, "my_attention.safetensors", condition(5))
    with pytest.raises(ValueError, match="is a LayerDiffuse attention LoRA .*, not a conditional model"):
        cond_node(tiny.model, standins.ATTN_FILE, condition(5))
    with pytest.raises(ValueError, match="is a LayerDiffuse transparent VAE decoder, not a conditional model"):
        cond_node(tiny.model, standins.DECODER_FILE, condition(5))
    with pytest.raises(ValueError, match="layer_xl_fgble2bg.safetensors takes 2 condition latent\\(s\\), 1 given"):
        cond_node(tiny.model, "layer_xl_fgble2bg.safetensors", condition(5))
    with pytest.raises(ValueError, match="the two conditions differ in size"):
        cond_node(tiny.model, "layer_xl_fgble2bg.safetensors", condition(5), condition(6, size=6))
    model, positive, negative = cond_node(tiny.model, "layer_xl_fg2ble.safetensors", condition(5, size=6))
    with pytest.raises(ConditionSizeError, match="the condition image is 48x48 but the generation is 64x64"):
        sample(model, positive, negative)
    with pytest.raises(ConditionSizeError, match="connect the positive and negative that come out of the same node"):
        sample(model, fixed_cond(2), fixed_cond(3))


def test_the_base_shapes_survive_a_model_left_patched(tiny, files):
    model, positive, negative = cond_node(tiny.model, "layer_xl_fgble2bg.safetensors", condition(5), condition(6))
    sample(model, positive, negative)  # ComfyUI keeps this model's padded input conv applied after the run
    _, count = lora_files.load_conditional(str(files["layer_xl_fg2ble.safetensors"]), tiny.model.model, unet_shapes(model))
    assert count == 1


def test_flatten_alpha_is_colour_over_grey():
    image = torch.rand(2, 8, 8, 4, generator=torch.Generator().manual_seed(0))
    flat = LayerFusionFlattenAlpha.execute(image).result[0]
    assert flat.shape == (2, 8, 8, 3)
    assert torch.allclose(flat, 0.5 + (image[..., :3] - 0.5) * image[..., 3:])
    from_mask = LayerFusionFlattenAlpha.execute(image[..., :3], 1.0 - image[..., 3]).result[0]
    assert torch.allclose(from_mask, flat, atol=1e-6)
    assert torch.equal(LayerFusionFlattenAlpha.execute(image[..., :3]).result[0], image[..., :3])


def test_a_dynamic_vram_model_is_swapped_for_its_non_dynamic_delegate_up_front(tiny, files, caplog):
    """Emulates current ComfyUI's ModelPatcherDynamic (is_dynamic, get_non_dynamic_delegate), which
    CFGGuider.inner_set_conds swaps for its delegate when conditioning carries weight hooks."""
    import logging

    import comfy.model_patcher

    delegates = []

    class DynamicLike(comfy.model_patcher.ModelPatcher):
        def is_dynamic(self):
            return True

        def get_non_dynamic_delegate(self):
            delegate = comfy.model_patcher.ModelPatcher.clone(self)
            delegate.__class__ = comfy.model_patcher.ModelPatcher
            delegates.append(delegate)
            return delegate

    dynamic = tiny.model.clone()
    dynamic.__class__ = DynamicLike
    with caplog.at_level(logging.WARNING):
        model, positive, negative = cond_node(dynamic, "layer_xl_fgble2bg.safetensors", condition(5), condition(6))
    assert len(delegates) == 1 and model.parent is delegates[0] and type(model) is comfy.model_patcher.ModelPatcher
    assert "dynamic VRAM" in caplog.text and "GB more memory" in caplog.text
    plain, p_pos, p_neg = cond_node(tiny.model, "layer_xl_fgble2bg.safetensors", condition(5), condition(6))
    assert torch.equal(sample(model, positive, negative), sample(plain, p_pos, p_neg))
