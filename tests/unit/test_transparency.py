"""Transparent decode/encode maths and modules, on plain tensors (torch.nn layers, no ComfyUI)."""

from __future__ import annotations

import pytest
import torch

from layerfusion.layerfusion_core.layout import latents
from layerfusion.layerfusion_core.layout.streams import Stream
from layerfusion.layerfusion_core.transparency import codec
from layerfusion.layerfusion_core.transparency.networks import SIZE_MULTIPLE, LatentOffsetEncoder, TransparentDecoder
from layerfusion_dev.testnodes import standins


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("module_cls,file_name", [(TransparentDecoder, standins.DECODER_FILE), (LatentOffsetEncoder, standins.ENCODER_FILE)])
def test_modules_load_every_real_tensor_name_and_shape_strictly(module_cls, file_name):
    module = module_cls()
    assert {k: list(v.shape) for k, v in module.state_dict().items()} == standins.layout()[file_name]
    module.load_state_dict(standins.exact_standin(file_name), strict=True)


def test_decoder_shapes_and_latent_path():
    torch.manual_seed(0)
    decoder = TransparentDecoder().eval()
    pixels, latent = torch.rand(1, 3, 64, 64, generator=gen()), torch.randn(1, 4, 8, 8, generator=gen(1))
    with torch.no_grad():
        out = decoder(pixels, latent)
        assert out.shape == (1, 4, 64, 64)
        assert not torch.allclose(out, decoder(pixels, torch.zeros_like(latent)))  # the latent reaches the decoder


def test_encoder_gives_a_latent_sized_offset():
    with torch.no_grad():
        assert LatentOffsetEncoder()(torch.rand(2, 4, 64, 96, generator=gen())).shape == (2, 4, 8, 12)


@pytest.mark.parametrize("flip,k", codec.AUGMENTATIONS)
def test_unaugment_inverts_augment(flip, k):
    x = torch.arange(2 * 3 * 5 * 7.0).view(2, 3, 5, 7)
    assert torch.equal(codec.unaugment(codec.augment(x, flip, k), flip, k), x)
    assert len(set(codec.AUGMENTATIONS)) == 8


class ToyDecoder(torch.nn.Module):
    """Position-dependent (so the 8 variants differ) and counting its calls."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(7, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen(3)))
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=gen(9)))
        self.calls = []

    def forward(self, pixels, latent):
        self.calls.append(pixels.shape[0])
        h, w = pixels.shape[-2:]
        ramp = torch.linspace(0, 1, w).expand(pixels.shape[0], 1, h, w)
        up = torch.nn.functional.interpolate(latent, size=(h, w))
        return self.conv(torch.cat([pixels, up[:, :3], ramp], dim=1)) * 2


def naive_decode(decoder, pixels, latent, multiple):
    """Each image and each variant on its own, written plainly."""
    out = []
    for i in range(pixels.shape[0]):
        h, w = pixels.shape[-2:]
        ph, pw = (-h) % multiple, (-w) % multiple
        p = torch.nn.functional.pad(pixels[i : i + 1], (0, pw, 0, ph), mode="replicate")
        lat = torch.nn.functional.pad(latent[i : i + 1], (0, pw // 8, 0, ph // 8), mode="replicate")
        variants = []
        for flip in (False, True):
            for k in range(4):
                pa, la = (p.flip(-1), lat.flip(-1)) if flip else (p, lat)
                y = decoder(torch.rot90(pa, k, (2, 3)), torch.rot90(la, k, (2, 3))).clamp(0, 1)
                y = torch.rot90(y, -k, (2, 3))
                y = y.flip(-1) if flip else y
                variants.append(y[..., :h, :w])
        med = torch.stack(variants).median(dim=0).values
        out.append(torch.cat([med[:, 1:], med[:, :1]], dim=1))
    return torch.cat(out)


@pytest.mark.parametrize("h,w,sub_batch", [(64, 64, 8), (40, 72, 3), (48, 48, 1)])
def test_decode_rgba_equals_the_naive_median_of_eight(h, w, sub_batch):
    decoder = ToyDecoder()
    pixels, latent = torch.rand(2, 3, h, w, generator=gen(4)), torch.randn(2, 4, h // 8, w // 8, generator=gen(5))
    seen = []
    with torch.no_grad():
        fast = codec.decode_rgba(decoder, pixels, latent, size_multiple=16, sub_batch=sub_batch, on_progress=seen.append)
        naive = naive_decode(ToyDecoder(), pixels, latent, 16)
    assert fast.shape == (2, 4, h, w) and fast.min() >= 0 and fast.max() <= 1
    assert torch.allclose(fast, naive, atol=1e-6)
    assert sum(seen) == 16 and max(decoder.calls) <= sub_batch


def test_decode_without_augmentation_and_from_pixels_alone():
    decoder = ToyDecoder()
    pixels = torch.rand(1, 3, 50, 30, generator=gen(6))  # not even a multiple of 8
    with torch.no_grad():
        out = codec.decode_rgba(decoder, pixels, None, size_multiple=SIZE_MULTIPLE, augmentations=codec.IDENTITY)
    assert out.shape == (1, 4, 50, 30) and decoder.calls == [1]
    with pytest.raises(ValueError, match="does not fit"):
        codec.decode_rgba(decoder, pixels[..., :48, :24], torch.zeros(1, 4, 5, 5), size_multiple=16)


def test_flatten_on_grey():
    rgb, alpha = torch.tensor([[[[0.0]], [[1.0]], [[0.8]]]]), torch.tensor([[[[0.25]]]])
    assert torch.allclose(codec.flatten_on_grey(rgb, alpha).flatten(), torch.tensor([0.375, 0.625, 0.575]))


def test_pad_rgb_keeps_visible_colour_and_fills_from_it():
    rgb = torch.rand(1, 3, 24, 40, generator=gen(7))
    alpha = torch.zeros(1, 1, 24, 40)
    alpha[..., 5:12, 8:20] = 1.0
    padded = codec.pad_rgb(rgb, alpha)
    visible = alpha.expand_as(rgb) > 0
    assert torch.allclose(padded[visible], rgb[visible], atol=1e-6)
    lo, hi = rgb[:, :, 5:12, 8:20].amin(dim=(2, 3)), rgb[:, :, 5:12, 8:20].amax(dim=(2, 3))
    assert (padded >= lo[..., None, None] - 1e-5).all() and (padded <= hi[..., None, None] + 1e-5).all()
    assert torch.allclose(codec.pad_rgb(rgb, torch.zeros_like(alpha)), torch.full_like(rgb, 0.5))
    one_colour = torch.tensor([0.2, 0.4, 0.9]).view(1, 3, 1, 1).expand(1, 3, 24, 40)
    assert torch.allclose(codec.pad_rgb(one_colour, alpha), one_colour, atol=1e-6)


def test_rgba_planes():
    image = torch.rand(2, 8, 8, 4, generator=gen(8))
    rgb, alpha = codec.rgba_planes(image)
    assert rgb.shape == (2, 3, 8, 8) and torch.equal(alpha[:, 0], image[..., 3])
    rgb, alpha = codec.rgba_planes(image[..., :3], torch.ones(1, 4, 4))  # ComfyUI mask: 1 = transparent
    assert alpha.shape == (2, 1, 8, 8) and alpha.max() == 0
    assert codec.rgba_planes(image[..., :3])[1] is None
    with pytest.raises(ValueError, match="3 masks for 2 images"):
        codec.rgba_planes(image, torch.ones(3, 8, 8))


def test_layered_latent_mark_and_stream_selection():
    latent = latents.empty_layered_latent(2, 64, 64)
    assert latents.is_layered(latent)
    assert latents.stream_selection(latent, Stream.FG).tolist() == [0, 3]
    assert latents.stream_selection(latent, None) is None
    plain = {"samples": torch.zeros(3, 4, 8, 8)}
    assert latents.stream_selection(plain, Stream.FG) is None
    parts = latents.split_layered_latent(latent)
    assert not latents.is_layered(parts[Stream.FG]) and latents.LAYERED_KEY not in parts[Stream.FG]
    assert not latents.is_layered({**latent, "samples": torch.zeros(4, 4, 8, 8)})  # batch changed since
