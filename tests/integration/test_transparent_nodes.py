"""The transparent decode and encode nodes on the real ComfyUI (model management, folder_paths),
with random stand-ins of the real decoder and encoder files."""

from __future__ import annotations

import pytest
import torch

from layerfusion.layerfusion_core.layout import latents
from layerfusion.layerfusion_core.layout.streams import THREE_STREAMS, Layout
from layerfusion.layerfusion_core.transparency import codec
from layerfusion.layerfusion_core.transparency.networks import LatentOffsetEncoder, TransparentDecoder
from layerfusion.nodes import transparent as nodes
from layerfusion_dev.testnodes import standins


@pytest.fixture(scope="module")
def layer_model(tmp_path_factory, tiny):
    import folder_paths

    folder = tmp_path_factory.mktemp("models") / "layer_model"
    standins.write_standins(folder, standins.unet_shapes(tiny.model), rank=2)
    folder_paths.add_model_folder_path("layer_model", str(folder))
    return folder


@pytest.fixture(scope="module")
def reference_decoder(layer_model):
    module = TransparentDecoder().eval()
    module.load_state_dict(lora_free(standins.load_exact_standin(standins.DECODER_FILE, seed=1)))  # the folder's file
    return module


def lora_free(state):  # fp16 stand-in -> fp32 module
    return {k: v.float() for k, v in state.items()}


def layered_batch(tiny, size=64, layout=THREE_STREAMS, sets=1):
    latent = latents.empty_layered_latent(sets, size, size, layout=layout)
    latent["samples"] = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(0))
    return latent, tiny.vae.decode(latent["samples"])


def decode(latent, images, **options):
    args = {"decoder_name": nodes.DECODER_FILE, "stream": "fg", "augment": False, "sub_batch_size": 8,
            "mask_polarity": nodes.MASK_TRANSPARENT, **options}
    return nodes.LayerFusionTransparentDecode.execute(latent, images, **args).result


def test_decode_picks_the_fg_rows_and_matches_the_module_run_directly(tiny, layer_model, reference_decoder):
    latent, images = layered_batch(tiny)
    rgba, rgb, mask = decode(latent, images)
    assert rgba.shape == (1, 64, 64, 4) and rgb.shape == (1, 64, 64, 3) and mask.shape == (1, 64, 64)
    with torch.no_grad():
        direct = reference_decoder(images[0:1].movedim(-1, 1), latent["samples"][0:1]).clamp(0, 1)
    assert torch.allclose(rgba[..., 3], direct[:, 0], atol=1e-4) and torch.allclose(rgb, direct[:, 1:].movedim(1, -1), atol=1e-4)
    assert torch.equal(mask, 1.0 - rgba[..., 3])
    assert torch.equal(decode(latent, images, mask_polarity=nodes.MASK_OPAQUE)[2], rgba[..., 3])
    assert decode(latent, images, stream="all")[0].shape[0] == 3
    assert torch.equal(decode(latent, images[0:1])[0], rgba)  # the VAE decode of the fg rows only
    plain = {"samples": latent["samples"]}
    assert decode(plain, images)[0].shape[0] == 3


def test_decode_of_several_foregrounds_gives_each_sets_foregrounds_in_order(tiny, layer_model):
    latent, images = layered_batch(tiny, layout=Layout(2), sets=2)  # rows: fg_1, fg_2, bg, blend, fg_1, fg_2, bg, blend
    rgba = decode(latent, images)[0]
    assert rgba.shape == (4, 64, 64, 4)
    fg_rows = [0, 1, 4, 5]
    alone = decode({"samples": latent["samples"][fg_rows]}, images[fg_rows])[0]  # the same rows as a plain latent
    assert torch.equal(rgba, alone)


def test_the_decoder_runs_under_comfy_model_management(layer_model):
    import comfy.model_management
    import comfy.model_patcher

    from layerfusion.layerfusion_core.transparency.loading import load_managed

    managed = load_managed(TransparentDecoder, str(layer_model / standins.DECODER_FILE))
    assert isinstance(managed.patcher, comfy.model_patcher.ModelPatcher)
    out = managed.run()(torch.rand(1, 3, 64, 64), torch.zeros(1, 4, 8, 8))
    assert out.shape == (1, 4, 64, 64) and out.dtype == torch.float32
    assert any(m.model is managed.patcher for m in comfy.model_management.current_loaded_models)


def test_augmented_decode_is_the_median_of_eight(tiny, layer_model, reference_decoder):
    latent, images = layered_batch(tiny)
    rgba = decode(latent, images, augment=True, sub_batch_size=5)[0]
    px, lt = images[0:1].movedim(-1, 1), latent["samples"][0:1]
    with torch.no_grad():
        variants = [codec.unaugment(reference_decoder(codec.augment(px, f, k), codec.augment(lt, f, k)).clamp(0, 1), f, k)
                    for f, k in codec.AUGMENTATIONS]
    median = torch.stack(variants).median(dim=0).values
    assert torch.allclose(rgba[..., 3], median[:, 0], atol=1e-4)


def test_upscaled_images_decode_from_pixels_alone(tiny, layer_model, reference_decoder):
    latent, images = layered_batch(tiny)
    big = torch.nn.functional.interpolate(images.movedim(-1, 1), size=(100, 100)).movedim(1, -1)
    rgba = decode(latent, big)[0]
    assert rgba.shape == (1, 100, 100, 4)
    padded = codec.pad_to_multiple(big[0:1].movedim(-1, 1), 64)
    with torch.no_grad():
        direct = reference_decoder(padded, torch.zeros(1, 4, 16, 16)).clamp(0, 1)[..., :100, :100]
    assert torch.allclose(rgba[..., 3], direct[:, 0], atol=1e-4)


def test_decode_errors_name_the_node_and_input(tiny, layer_model):
    latent, images = layered_batch(tiny)
    with pytest.raises(ValueError, match=r"LayerFusion Transparent Decode: input 'decoder_name': layer_xl_transparent_attn.safetensors: "
                                         r"none of its .* tensors is a transparent VAE decoder tensor"):
        decode(latent, images, decoder_name=standins.ATTN_FILE)
    with pytest.raises(ValueError, match=r"input 'images': has 2 images for 1 latent rows"):
        decode(latent, images[0:2])


def rgba_image(source: str) -> torch.Tensor:
    """A random RGBA image with hard alpha, or the real soft-alpha RGBA PNG matplotlib ships."""
    if source == "real":
        from support.layered_readers import real_rgba

        return torch.from_numpy(real_rgba()).float()[None] / 255.0
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(1, 64, 64, 4, generator=gen)
    image[..., 3] = (torch.rand(1, 64, 64, generator=gen) > 0.5).float()
    return image


@pytest.mark.parametrize("source", ["random", "real"])
def test_encode_adds_the_offset_to_the_posterior(tiny, layer_model, source):
    image = rgba_image(source)
    latent = nodes.LayerFusionTransparentEncode.execute(image, tiny.vae, nodes.ENCODER_FILE).result[0]["samples"]
    assert latent.shape == (1, 4, image.shape[1] // 8, image.shape[2] // 8)

    rgb, alpha = image[..., :3].movedim(-1, 1), image[..., 3:].movedim(-1, 1)
    model = tiny.vae.first_stage_model
    with torch.no_grad():
        moments = model.quant_conv(model.encoder(codec.flatten_on_grey(rgb, alpha) * 2 - 1))
        mean, logvar = moments.chunk(2, dim=1)
        encoder = LatentOffsetEncoder().eval()
        encoder.load_state_dict(lora_free(standins.exact_standin(standins.ENCODER_FILE, seed=2)))
        offset = encoder(torch.cat([alpha, codec.pad_rgb(rgb, alpha)], dim=1))
    assert torch.allclose(latent, mean + torch.exp(0.5 * logvar) * offset, atol=1e-4)
    assert not torch.allclose(latent, mean, atol=1e-3)  # the offset matters

    as_mask = nodes.LayerFusionTransparentEncode.execute(image[..., :3], tiny.vae, nodes.ENCODER_FILE, 1.0 - image[..., 3]).result[0]
    assert torch.allclose(as_mask["samples"], latent, atol=1e-5)

    images = tiny.vae.decode(latent)  # and back: Transparent Decode of that latent, at the image's size
    rgba, _rgb, mask = decode({"samples": latent}, images)
    assert rgba.shape == image.shape and torch.isfinite(rgba).all() and rgba.min() >= 0 and rgba.max() <= 1
    assert torch.allclose(mask, 1.0 - rgba[..., 3])


@pytest.mark.slow  # the VAE at SDXL's own width and depth (83M parameters); the nodes' maths is checked on the tiny VAE above
def test_encode_then_decode_a_sprite_through_the_real_sdxl_vae_architecture(layer_model):
    from layerfusion_dev.testnodes import tiny_sdxl

    vae = tiny_sdxl.build_vae(seed=0, full_width=True)
    assert sum(p.numel() for p in vae.first_stage_model.parameters()) > 80e6
    sprite = torch.zeros(1, 72, 96, 4)
    sprite[..., 0], sprite[..., 2] = 0.9, 0.3
    sprite[:, 16:56, 24:72, 3] = 1.0
    latent = nodes.LayerFusionTransparentEncode.execute(sprite, vae, nodes.ENCODER_FILE).result[0]
    assert latent["samples"].shape == (1, 4, 9, 12)
    images = vae.decode(latent["samples"])
    rgba, rgb, mask = decode(latent, images, augment=True)
    assert rgba.shape == (1, 72, 96, 4) and mask.shape == (1, 72, 96)
    assert torch.isfinite(rgba).all() and rgba.min() >= 0 and rgba.max() <= 1
