"""Layered files (PSD, OpenRaster) re-read by independent readers, and the straight-alpha
compositing of Recompose against a naive per-pixel implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layerfusion.layerfusion_core import layered_files, light_shadow
from layerfusion.layerfusion_core.layered_files import Layer
from support.flattening import flatten_file, lit_objects, lit_scene
from support.layered_readers import READERS, real_objects, real_rgba


def layer_stack(seed: int = 0) -> list[Layer]:
    """background (opaque), foreground (the real soft-alpha RGBA image), composite (hidden)."""
    rng = np.random.default_rng(seed)
    fg = real_rgba()
    h, w = fg.shape[:2]
    bg = layered_files.opaque(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    composite = layered_files.opaque(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return [Layer("background", bg), Layer("foreground", fg), Layer("composite", composite, visible=False)]


def naive_over(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Straight-alpha "over", one pixel at a time, in floats (the reference)."""
    out = np.zeros(top.shape[:2] + (bottom.shape[2],))
    for i in range(top.shape[0]):
        for j in range(top.shape[1]):
            a = top[i, j, 3]
            if bottom.shape[2] == 3:
                out[i, j] = top[i, j, :3] * a + bottom[i, j] * (1 - a)
            else:
                b = bottom[i, j, 3]
                alpha = a + b * (1 - a)
                out[i, j, 3] = alpha
                out[i, j, :3] = (top[i, j, :3] * a + bottom[i, j, :3] * b * (1 - a)) / alpha if alpha > 0 else 0
    return out


def test_the_test_image_is_real_rgba_with_partial_alpha():
    image = real_rgba()
    assert image.shape == (128, 128, 4)
    alpha = image[..., 3]
    assert alpha.min() == 0 and alpha.max() == 255 and ((alpha > 0) & (alpha < 255)).sum() > 100


def written_and_read(folder, kind: str, layers):
    """``layers`` written as a ``kind`` file in ``folder`` and read back by the independent reader."""
    path = folder / f"layers.{kind}"
    layered_files.WRITERS[kind](path, layers)
    return READERS[kind](path)


@pytest.mark.parametrize("kind", layered_files.FORMATS)
def test_a_written_file_reads_back_exactly_with_an_independent_reader(tmp_path, kind):
    layers = layer_stack()
    read, merged, size = written_and_read(tmp_path, kind, layers)
    assert size == (128, 128)
    assert [(r.name, r.visible) for r in read] == [("background", True), ("foreground", True), ("composite", False)]
    for written, back in zip(layers, read):
        assert np.array_equal(back.pixels, written.pixels), written.name  # straight alpha, every pixel exact
    expected = naive_over(layers[1].pixels / 255.0, layers[0].pixels / 255.0)  # the visible stack: fg over bg
    assert np.abs(merged[..., :3].astype(int) - np.round(expected[..., :3] * 255)).max() <= 1
    assert (merged[..., 3] == 255).all() if merged.shape[2] == 4 else True


def test_a_layer_must_be_rgba_uint8():
    with pytest.raises(ValueError, match=r"expected \[H, W, 4\] uint8"):
        Layer("foreground", np.zeros((4, 4, 3), np.uint8))


@pytest.mark.parametrize("bottom_channels", [3, 4])
def test_composite_over_equals_the_naive_per_pixel_over(bottom_channels):
    gen = torch.Generator().manual_seed(0)
    top = torch.rand(1, 6, 5, 4, generator=gen)
    top[0, 0, :, 3] = 0.0  # fully transparent and fully opaque rows too
    top[0, 1, :, 3] = 1.0
    bottom = torch.rand(1, 6, 5, bottom_channels, generator=gen)
    if bottom_channels == 4:
        bottom[0, 2, :, 3] = 0.0
        top[0, 2, 0, 3] = 0.0  # both transparent: the result is transparent black
    out = layered_files.composite_over(top, bottom)[0].numpy()
    assert np.allclose(out, naive_over(top[0].double().numpy(), bottom[0].double().numpy()), atol=1e-6)


def test_place_at_scale_one_copies_the_pixels_to_their_offset_and_crops_at_the_edges():
    fg = torch.from_numpy(real_rgba()).float()[None] / 255.0
    placed = layered_files.place(fg, 100, 150, x=90, y=-20, scale=1.0)[0]
    assert placed.shape == (100, 150, 4)
    assert torch.equal(placed[0:100, 90:150], fg[0, 20:120, 0:60])
    assert placed[:, :90].abs().sum() == 0  # nothing left of the offset


def test_scaling_keeps_the_colour_of_a_soft_edge_with_no_dark_fringe():
    fg = torch.zeros(1, 16, 16, 4)
    fg[..., :3] = torch.tensor([0.9, 0.5, 0.1])
    fg[0, 4:12, 4:12, 3] = 1.0
    fg[0, 3, 3:13, 3] = 0.4  # a soft edge
    placed = layered_files.place(fg, 40, 40, x=2, y=3, scale=2.0)[0]
    covered = placed[..., 3] > 1e-3
    assert covered.sum() > 200
    assert torch.allclose(placed[covered][:, :3], torch.tensor([0.9, 0.5, 0.1]).expand(int(covered.sum()), 3), atol=1e-4)


# ---- blend modes and the light-and-shadow layers -------------------------------------------------
def blended_stack(seed: int = 0) -> list[Layer]:
    """A background with a soft-alpha hole, a Multiply and an Addition layer with partial alpha, the foreground."""
    rng = np.random.default_rng(seed)
    fg = real_rgba()
    h, w = fg.shape[:2]
    bg = layered_files.opaque(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    bg[:20, :, 3] = rng.integers(0, 256, (20, w), dtype=np.uint8)  # a backdrop that is not opaque everywhere
    return [Layer("background", bg), Layer("shadow", rng.integers(0, 256, (h, w, 4), dtype=np.uint8), blend=light_shadow.MULTIPLY),
            Layer("light", rng.integers(0, 256, (h, w, 4), dtype=np.uint8), blend=light_shadow.ADD), Layer("foreground", fg)]


@pytest.mark.parametrize("kind", layered_files.FORMATS)
def test_blend_modes_are_written_as_the_formats_name_them_and_merged_flattens_as_the_naive_flattening(tmp_path, kind):
    layers = blended_stack()
    read, merged, _size = written_and_read(tmp_path, kind, layers)
    keys = {"psd": ["norm", "mul ", "lddg", "norm"], "ora": ["svg:src-over", "svg:multiply", "svg:plus", "svg:src-over"]}
    assert [r.blend for r in read] == keys[kind]
    assert all(np.array_equal(back.pixels, written.pixels) for written, back in zip(layers, read))
    naive = np.round(flatten_file(read) * 255)
    assert np.abs(merged.astype(int) - naive).max() <= 1  # the files' merged image: the stack as an editor blends it
    assert np.abs(layered_files.merged(layers).astype(int) - naive).max() <= 1


def test_a_set_without_light_and_shadow_is_as_before_and_with_it_has_the_two_layers_between():
    fg, bg, comp = (torch.from_numpy(real_rgba()).float() / 255.0, *lit_scene(torch.from_numpy(real_rgba()).float() / 255.0))
    mask = torch.rand(128, 128, generator=torch.Generator().manual_seed(1))
    plain = layered_files.set_layers(fg, bg[0], comp[0], mask)
    assert [(layer.name, layer.visible, layer.blend.name) for layer in plain] == [
        ("background", True, "normal"), ("foreground", True, "normal"), ("composite", False, "normal"), ("mask", False, "normal")]
    lit = layered_files.set_layers(fg, bg[0], comp[0], mask, light_and_shadow=True)
    assert [(layer.name, layer.visible, layer.blend.name) for layer in lit] == [
        ("background", True, "normal"), ("shadow", True, "multiply"), ("light", True, "add"), ("foreground", True, "normal"),
        ("composite", False, "normal"), ("mask", False, "normal")]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(plain, lit[:1] + lit[3:]))
    shows = real_rgba()[..., 3] < 255
    error = np.abs(layered_files.merged(lit)[..., :3].astype(int) - layered_files.to_uint8(comp[0]).astype(int)).max(axis=-1)
    assert error[shows].max() <= 1
    assert np.abs(layered_files.merged(plain)[..., :3].astype(int) - layered_files.to_uint8(comp[0])).max(axis=-1)[shows].max() > 20
    with pytest.raises(ValueError, match="light_and_shadow needs the composite"):
        layered_files.set_layers(fg, bg[0], None, light_and_shadow=True)


# ---- several objects per set (K foregrounds, bottom first) -----------------------------------------
def test_objects_are_named_as_one_foreground_or_numbered_from_the_bottom_and_a_set_is_its_k_rows():
    assert layered_files.object_names(1) == ["foreground"] and layered_files.object_names(1, "mask") == ["mask"]
    assert layered_files.object_names(3) == ["foreground 1", "foreground 2", "foreground 3"]
    assert layered_files.object_names(2, "mask") == ["mask 1", "mask 2"]
    rows = torch.arange(6)
    assert layered_files.set_rows(rows, 3, 1).tolist() == [3, 4, 5] and layered_files.set_rows(rows, 1, 4).tolist() == [4]


def test_one_object_given_as_a_batch_of_one_makes_the_same_layers_as_the_object_itself():
    fg = torch.from_numpy(real_rgba()).float() / 255.0
    bg, comp = lit_scene(fg, seed=2)
    mask = torch.rand(128, 128, generator=torch.Generator().manual_seed(2))
    alone = layered_files.set_layers(fg, bg[0], comp[0], mask, light_and_shadow=True)
    batched = layered_files.set_layers(fg[None], bg[0], comp[0], mask[None], light_and_shadow=True)
    assert [(a.name, a.visible, a.blend) for a in alone] == [(b.name, b.visible, b.blend) for b in batched]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(alone, batched))


def test_a_set_of_two_objects_stacks_them_above_the_light_and_shadow_and_flattens_back_to_the_composite():
    fg = torch.from_numpy(real_objects()).float() / 255.0
    bg, comp = lit_objects(fg, seed=4)
    masks = torch.rand(2, 128, 128, generator=torch.Generator().manual_seed(4))
    lit = layered_files.set_layers(fg, bg[0], comp[0], masks, light_and_shadow=True)
    assert [(layer.name, layer.visible, layer.blend.name) for layer in lit] == [
        ("background", True, "normal"), ("shadow", True, "multiply"), ("light", True, "add"),
        ("foreground 1", True, "normal"), ("foreground 2", True, "normal"), ("composite", False, "normal"),
        ("mask 1", False, "normal"), ("mask 2", False, "normal")]
    assert np.array_equal(lit[3].pixels, real_objects()[0]) and np.array_equal(lit[4].pixels, real_objects()[1])
    assert np.array_equal(lit[7].pixels[..., 0], layered_files.to_uint8(masks[1]))
    want = layered_files.to_uint8(comp[0]).astype(int)
    shows = (real_objects()[..., 3] < 255).all(axis=0)  # no object opaque: the layers below them show
    error = np.abs(layered_files.merged(lit)[..., :3].astype(int) - want).max(axis=-1)
    assert shows.sum() > 1000 and error[shows].max() <= 1
    plain = layered_files.set_layers(fg, bg[0], comp[0], masks)
    assert [layer.name for layer in plain] == ["background", "foreground 1", "foreground 2", "composite", "mask 1", "mask 2"]
    assert np.abs(layered_files.merged(plain)[..., :3].astype(int) - want).max(axis=-1)[shows].max() > 20
    # made for the top object alone, the layers would miss where the bottom one shows: the test can tell
    top_only = layered_files.set_layers(fg[1], bg[0], comp[0], light_and_shadow=True)[1:3]
    assert np.abs(layered_files.merged(lit[:1] + top_only + lit[3:5])[..., :3].astype(int) - want).max(axis=-1)[shows].max() > 20


@pytest.mark.parametrize("background_channels", [3, 4])
def test_recompose_places_every_object_of_a_set_alike_and_stacks_them_bottom_first(background_channels):
    gen = torch.Generator().manual_seed(3)
    fg = torch.rand(4, 6, 5, 4, generator=gen)  # 2 sets of 2 objects
    fg[..., 3] = (fg[..., 3] * 3).round() / 3  # clear, soft and opaque
    background = torch.rand(2, 9, 8, background_channels, generator=gen)
    image, alpha = layered_files.recompose(fg, background, 2, 1, 1.0, foregrounds=2)
    assert image.shape == (2, 9, 8, background_channels) and alpha.shape == (2, 9, 8)
    for index in range(2):
        below = background[index, 1:7, 2:7].double().numpy()
        for layer in fg[2 * index:2 * index + 2]:
            below = naive_over(layer.double().numpy(), below)
        assert np.allclose(image[index, 1:7, 2:7].numpy(), below, atol=1e-6)
        union = 1 - (1 - fg[2 * index, ..., 3]) * (1 - fg[2 * index + 1, ..., 3])
        assert torch.allclose(alpha[index, 1:7, 2:7], union, atol=1e-6) and (alpha[index, 7:] == 0).all()
        assert torch.allclose(image[index, 7:], background[index, 7:], atol=1e-6)  # nothing placed there
    placed = layered_files.place(fg, 9, 8, 2, 1, 1.0)
    one = layered_files.recompose(fg, torch.cat([background, background]), 2, 1, 1.0)
    assert torch.equal(one[0], layered_files.composite_over(placed, torch.cat([background, background]))) and torch.equal(one[1], placed[..., 3])
