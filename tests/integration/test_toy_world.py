"""The toy world's parts are what its docstrings say (layerfusion_dev/toy_world, testnodes/toy_models):
the exact VAE, the hand-set text encoder's roles for EOS and padding, the files loading through ComfyUI's
own code as v-prediction SDXL, and the foreground LoRA through the pack's own loader."""

from __future__ import annotations

import pytest
import torch

from layerfusion_dev.testnodes import toy_models
from layerfusion_dev.toy_world import scenes

pytestmark = pytest.mark.integration
TRAINED = (toy_models.FILES / toy_models.CHECKPOINT).is_file() and (toy_models.FILES / toy_models.FG_LORA).is_file()
needs_files = pytest.mark.skipif(not TRAINED, reason="the toy world's files are not in the checkout (make toy-world)")


@pytest.fixture(scope="module")
def world_scenes():
    return scenes.render(scenes.draw_specs(3, torch.Generator().manual_seed(5)))


def test_vae_is_an_exact_8x8_mean(world_scenes):
    vae = toy_models.build_vae()
    with torch.no_grad():
        latent = vae.encode(world_scenes.blend.permute(0, 2, 3, 1))
        decoded = vae.decode(latent)
    assert torch.allclose(latent * toy_models.LATENT_SCALE, toy_models.model_latent(world_scenes.blend), atol=1e-5)
    blocks = torch.nn.functional.avg_pool2d(world_scenes.blend, 8)
    painted = torch.nn.functional.interpolate(blocks, scale_factor=8, mode="nearest").permute(0, 2, 3, 1)
    assert (decoded - painted).abs().max().item() < 1e-3


def test_transparent_latent_round_trip(world_scenes):
    vae = toy_models.build_vae()
    latent = toy_models.transparent_latent(world_scenes.fg)
    with torch.no_grad():
        rgb = vae.decode(latent / toy_models.LATENT_SCALE)
    rgba = toy_models.transparent_decode(latent / toy_models.LATENT_SCALE, rgb)
    alpha = world_scenes.fg[:, 3]
    inside = torch.nn.functional.avg_pool2d(alpha[:, None], 8, stride=8)
    solid = torch.nn.functional.interpolate((inside > 0.999).float(), scale_factor=8)[:, 0] > 0.5  # whole blocks of object
    assert solid.any()
    colour = world_scenes.fg[:, :3].permute(0, 2, 3, 1)
    assert (rgba[..., :3][solid] - colour[solid]).abs().max().item() < 1e-3
    core = -torch.nn.functional.max_pool2d(-(inside > 0.999).float(), 3, stride=1, padding=1)  # solid blocks among solid ones
    core = torch.nn.functional.interpolate(core, scale_factor=8)[:, 0] > 0.5
    assert core.any() and (rgba[..., 3][core] - 1).abs().max().item() < 1e-3
    empty = torch.nn.functional.interpolate((inside < 1e-4).float(), scale_factor=8)[:, 0] > 0.5
    assert rgba[..., 3][empty].max().item() < 0.08  # bilinear upsampling lets a little alpha past block edges


def test_text_encoder_gives_eos_the_whole_prompt_and_padding_nothing():
    clip = toy_models.build_clip(0)
    encoded = toy_models.encode_prompts(clip, ["a red circle", "a blue square", "a red square"])
    context = {p: c[:, toy_models.CLIP_L_WIDTH:] for p, (c, _) in encoded.items()}
    red_circle, blue_square, red_square = context.values()
    eos = 4  # BOS a <colour> <shape> EOS
    # a word token carries its own word: "red" is the same in both red prompts, not in the blue one
    assert torch.allclose(red_circle[2], red_square[2], atol=1e-5)
    assert not torch.allclose(red_circle[2], blue_square[2], atol=1e-2)
    # EOS carries every word: it differs between prompts that share all but one word
    assert not torch.allclose(red_circle[eos], red_square[eos], atol=1e-2)
    # the padding is the same whatever the prompt (it carries nothing of it)
    assert torch.allclose(red_circle[eos + 1:], blue_square[eos + 1:], atol=1e-5)
    # CLIP-L carries nothing
    assert all(c[:, :toy_models.CLIP_L_WIDTH].abs().max() == 0 for c, _ in encoded.values())


@needs_files
def test_checkpoint_loads_through_comfyui_as_v_prediction_sdxl():
    import comfy.model_base
    import comfy.model_detection
    import comfy.utils

    model, clip, vae = toy_models.load_checkpoint(toy_models.FILES / toy_models.CHECKPOINT)
    assert isinstance(model.model, comfy.model_base.SDXL)
    assert model.model.model_type == comfy.model_base.ModelType.V_PREDICTION
    sd = comfy.utils.load_torch_file(str(toy_models.FILES / toy_models.CHECKPOINT))
    detected = comfy.model_detection.detect_unet_config(sd, "model.diffusion_model.")
    assert {k: detected[k] for k in toy_models.unet_config()} == toy_models.unet_config()
    assert all(v.dtype == torch.float16 for k, v in sd.items() if v.is_floating_point() and v.numel() > 0)
    assert type(vae.first_stage_model).__name__ == "TAESD"


@needs_files
def test_foreground_lora_loads_through_the_pack_on_every_attention_projection():
    from layerfusion.layerfusion_core.patching.model_info import transformer_keys, unet_shapes
    from layerfusion.layerfusion_core.weights.lora_files import load_lora

    model, _, _ = toy_models.load_checkpoint(toy_models.FILES / toy_models.CHECKPOINT)
    lora = load_lora(str(toy_models.FILES / toy_models.FG_LORA), model.model, unet_shapes(model))
    assert lora.patched_weights == 8 * len(transformer_keys(model))


def test_layout_marker_matches_the_pack():
    from layerfusion.layerfusion_core.layout.latents import FOREGROUNDS_KEY, LAYERED_KEY
    from layerfusion_dev.testnodes import layout

    assert layout.LAYERED_KEY == LAYERED_KEY and layout.FOREGROUNDS_KEY == FOREGROUNDS_KEY


@needs_files
def test_files_match_their_recorded_hashes_and_metadata():
    import hashlib
    import json

    recorded = json.loads((toy_models.FILES / "hashes.json").read_text())
    assert recorded == {name: hashlib.sha256((toy_models.FILES / name).read_bytes()).hexdigest()
                        for name in (toy_models.CHECKPOINT, toy_models.FG_LORA)}
    meta = toy_models.read_metadata(toy_models.FILES / toy_models.FG_LORA)["toy_world"]
    assert set(meta) == {"seed", "base_steps", "fg_steps", "lora_rank"}


@needs_files
def test_probe_reads_both_priors_in_every_transformer_block():
    """`toy_world.probe` (the per-block diagnostics in the README): every block of the toy UNet at every
    noise level, IoUs and the EOS share in [0, 1]; the LoRA it merges is the file's up @ down."""
    import safetensors.torch

    from layerfusion_dev.toy_world import probe

    model, clip, _ = toy_models.load_checkpoint(toy_models.FILES / toy_models.CHECKPOINT)
    unet = model.model.diffusion_model
    name = "output_blocks.5.1.transformer_blocks.1.attn2.to_k"
    before = dict(unet.named_modules())[name].weight.detach().clone()
    probe.merge_lora(unet, toy_models.FILES / toy_models.FG_LORA)
    tensors = safetensors.torch.load_file(str(toy_models.FILES / toy_models.FG_LORA))
    up, down = (tensors[f"diffusion_model.{name}.weight::lora::{i}"].float() for i in (0, 1))
    assert torch.allclose(dict(unet.named_modules())[name].weight, before + up @ down, atol=1e-6)
    assert probe.block_name(name.rsplit(".", 1)[0]) == "output 5 1"
    result = probe.probe(model, clip, transparent=True, count=2)
    blocks = {block for block, _ in result}
    assert len(blocks) == 22 and "output 5 1" in blocks and "middle 0 1" in blocks
    assert {sigma for _, sigma in result} == set(probe.SIGMAS)
    for values in result.values():
        assert all(0.0 <= values[k] <= 1.0 for k in ("c_iou", "c_mean", "s_iou")), values
    assert "| output 5 1 |" in probe.report(result)
