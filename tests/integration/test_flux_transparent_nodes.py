"""The FLUX transparent decoder and encoder in the nodes, on the real ComfyUI in process: the
variant read from the files, strict loading, the RGBA order, the latent space the decoder gets
(checked against ComfyUI's own FLUX latent format), the encoder path and the mismatch errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from layerfusion.layerfusion_core.transparency import codec
from layerfusion.layerfusion_core.transparency.loading import load_managed, posterior_moments
from layerfusion.layerfusion_core.transparency.networks import LatentOffsetEncoder, TransparentDecoder
from layerfusion.layerfusion_core.transparency.variants import FLUX, SDXL
from layerfusion.layerfusion_core.weights.safetensors_io import WeightFileError
from layerfusion.nodes import transparent as nodes
from layerfusion_dev.testnodes import standins

MARKED = {"sdxl_marked_decoder.safetensors": (SDXL, 0), "flux_marked_decoder.safetensors": (FLUX, 3)}  # alpha channel of each


def marked_decoder(variant, channel: int) -> dict[str, torch.Tensor]:
    """A decoder file whose output is 0.9 in one channel and 0.1 in the others, whatever the input."""
    state = standins.load_exact_standin(standins.DECODER_FILE, seed=1) if variant is SDXL else standins.load_flux_part_standin("decoder.", seed=0)
    state["conv_out.weight"] = torch.zeros_like(state["conv_out.weight"])
    bias = torch.full((4,), 0.1)
    bias[channel] = 0.9
    state["conv_out.bias"] = bias.to(state["conv_out.bias"].dtype)
    return state


@pytest.fixture(scope="module")
def layer_model(tmp_path_factory, tiny):
    import folder_paths

    folder = tmp_path_factory.mktemp("models") / "layer_model"
    standins.write_standins(folder, standins.unet_shapes(tiny.model), rank=2)
    standins.write_flux_standins(folder)
    for name, (variant, channel) in MARKED.items():
        save_file(marked_decoder(variant, channel), str(folder / name))
    folder_paths.add_model_folder_path("layer_model", str(folder))
    return folder


@pytest.fixture(scope="module")
def flux_vae():
    from layerfusion_dev.testnodes import tiny_flux

    return tiny_flux.build_vae(seed=0)


def decode(latent: torch.Tensor, images: torch.Tensor, decoder: str, **options):
    args = {"decoder_name": decoder, "stream": "all", "augment": False, "sub_batch_size": 8,
            "mask_polarity": nodes.MASK_OPAQUE, **options}
    return nodes.LayerFusionTransparentDecode.execute({"samples": latent}, images, **args).result


def test_comfyuis_latent_is_the_raw_space_the_flux_decoder_expects():
    """The diffusers recipe feeds the decoder ``model_latents / scaling_factor + shift_factor``; a
    ComfyUI LATENT is the sampler's output after ``Flux().process_out``: the same tensor. So the
    nodes pass LATENT samples unchanged (and the VAE encode side is raw too: process_in undoes it)."""
    import comfy.latent_formats

    fmt = comfy.latent_formats.Flux()
    assert (fmt.scale_factor, fmt.shift_factor, fmt.latent_channels) == (0.3611, 0.1159, FLUX.latent_channels)
    model_space = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    diffusers_decoder_input = model_space / 0.3611 + 0.1159
    assert torch.allclose(fmt.process_out(model_space), diffusers_decoder_input, atol=1e-6)
    assert torch.allclose(fmt.process_in(diffusers_decoder_input), model_space, atol=1e-5)


def test_the_decode_node_feeds_the_latent_unchanged_and_keeps_the_flux_order(layer_model, flux_vae):
    latent = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    images = flux_vae.decode(latent)
    rgba, rgb, mask = decode(latent, images, standins.FLUX_DECODER_FILE)
    reference = TransparentDecoder(variant=FLUX).eval()
    reference.load_state_dict({k: v.float() for k, v in standins.load_flux_part_standin("decoder.", seed=0).items()}, strict=True)
    with torch.no_grad():
        direct = reference(images.movedim(-1, 1), latent).clamp(0, 1)  # the LATENT samples as they are
    assert torch.allclose(rgba.movedim(-1, 1), direct, atol=1e-5)  # R, G, B, A: no reordering for FLUX
    assert torch.equal(mask, rgba[..., 3]) and torch.equal(rgb, rgba[..., :3])
    with torch.no_grad():
        scaled = reference(images.movedim(-1, 1), (latent - 0.1159) * 0.3611).clamp(0, 1)
    # the latent space matters (the random stand-in's latent path is weak: 3e-4 here vs 0 for the right space)
    assert (rgba.movedim(-1, 1) - scaled).abs().max() > 20 * (rgba.movedim(-1, 1) - direct).abs().max() + 1e-5


@pytest.mark.parametrize("name", sorted(MARKED))
def test_the_decoders_alpha_channel_is_the_nodes_alpha(layer_model, name):
    variant, _ = MARKED[name]
    latent = torch.zeros(1, variant.latent_channels, 8, 8)
    rgba, _, _ = decode(latent, torch.rand(1, 64, 64, 3), name, augment=True)
    assert torch.allclose(rgba[..., 3], torch.full_like(rgba[..., 3], 0.9), atol=2e-3)  # fp16 on some devices
    assert torch.allclose(rgba[..., :3], torch.full_like(rgba[..., :3], 0.1), atol=2e-3)


def test_the_variant_is_read_from_the_tensors_not_the_name(layer_model, tmp_path):
    assert load_managed(TransparentDecoder, str(layer_model / standins.FLUX_DECODER_FILE)).variant is FLUX
    assert load_managed(LatentOffsetEncoder, str(layer_model / standins.FLUX_ENCODER_FILE)).variant is FLUX
    assert load_managed(TransparentDecoder, str(layer_model / standins.DECODER_FILE)).variant is SDXL
    misnamed = tmp_path / "vae_transparent_decoder.safetensors"  # FLUX tensors under the SDXL name
    save_file(standins.load_flux_part_standin("decoder.", seed=0), str(misnamed))
    assert load_managed(TransparentDecoder, str(misnamed)).variant is FLUX


@pytest.mark.parametrize("change,message", [
    ("missing", r"1 tensors are missing \(e.g. \['conv_out.bias'\]\) and 0 are unexpected"),
    # the layout check's other two messages are checked on the unit tier too (test_flux_transparent): slow tier here
    pytest.param("extra", r"0 tensors are missing .* and 1 are unexpected \(e.g. \['conv_out.extra'\]\)", marks=pytest.mark.slow),
    pytest.param("shape", r"1 tensors have the wrong shape \(e.g. conv_in.weight: \(32, 4, 3, 3\), expected \(32, 3, 3, 3\)\)",
                 marks=pytest.mark.slow),
    ("channels", r"latent_conv_in.weight has shape \[64, 8, 1, 1\]: 8 latent channels, known: 4 \(SDXL\), 16 \(FLUX\)"),
])
def test_flux_files_load_strictly(tmp_path, change, message):
    state = standins.load_flux_part_standin("decoder.", seed=0)
    if change == "missing":
        del state["conv_out.bias"]
    elif change == "extra":
        state["conv_out.extra"] = torch.zeros(4)
    elif change == "shape":
        state["conv_in.weight"] = torch.zeros(32, 4, 3, 3)
    else:
        state["latent_conv_in.weight"] = torch.zeros(64, 8, 1, 1)
    path = tmp_path / "broken_flux_decoder.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightFileError, match=message) as err:
        load_managed(TransparentDecoder, str(path))
    assert "vae_transparent_decoder.safetensors (SDXL" in str(err.value) and "vae_transparent_decoder_flux.safetensors (FLUX" in str(err.value)


def test_mismatched_latents_are_refused_by_node_input_expectation_and_fix(layer_model):
    images = torch.rand(1, 64, 64, 3)
    with pytest.raises(ValueError, match=r"LayerFusion Transparent Decode: input 'samples': has 4 latent channels \(shape \(1, 4, 8, 8\)\), "
                                         r"expected 16 \(FLUX, as vae_transparent_decoder_flux.safetensors\)\. .*connect the FLUX VAE "
                                         r"\(ae.safetensors\)'s 16-channel latents, or choose the SDXL file \(vae_transparent_decoder.safetensors\)"):
        decode(torch.zeros(1, 4, 8, 8), images, standins.FLUX_DECODER_FILE)
    with pytest.raises(ValueError, match=r"input 'samples': has 16 latent channels .* expected 4 \(SDXL, as vae_transparent_decoder.safetensors\)"
                                         r".* or choose the FLUX file \(vae_transparent_decoder_flux.safetensors\) in 'decoder_name'"):
        decode(torch.zeros(1, 16, 8, 8), images, standins.DECODER_FILE)


def test_flux_encode_is_the_posterior_plus_300_std_offset_of_rgb_then_alpha(layer_model, flux_vae):
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(1, 64, 64, 4, generator=gen)
    image[..., 3] = (torch.rand(1, 64, 64, generator=gen) > 0.5).float()
    latent = nodes.LayerFusionTransparentEncode.execute(image, flux_vae, standins.FLUX_ENCODER_FILE).result[0]["samples"]
    assert latent.shape == (1, 16, 8, 8)

    rgb, alpha = image[..., :3].movedim(-1, 1), image[..., 3:].movedim(-1, 1)
    flat = codec.flatten_on_grey(rgb, alpha)
    mean, std = posterior_moments(flux_vae, flat)
    assert torch.allclose(mean, flux_vae.encode(flat.movedim(1, -1)), atol=1e-4)  # the FLUX-style VAE's own mode
    encoder = LatentOffsetEncoder(variant=FLUX).eval()
    encoder.load_state_dict({k: v.float() for k, v in standins.flux_part_standin("encoder.", seed=1).items()}, strict=True)
    with torch.no_grad():
        offset = encoder(torch.cat([codec.pad_rgb(rgb, alpha), alpha], dim=1))
    assert torch.allclose(latent, mean + std * 300.0 * offset, atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match=r"LayerFusion Transparent Encode: input 'vae': makes 16-channel latents, expected 4 \(SDXL"):
        nodes.LayerFusionTransparentEncode.execute(image, flux_vae, standins.ENCODER_FILE)
