"""LayerFusion Save Layers and LayerFusion Recompose as ComfyUI runs them (in-process): files in
the output folder that independent readers give back exactly, errors for people, and the
recomposition against the naive over."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from layerfusion.layerfusion_core import layered_files, light_shadow
from layerfusion.nodes.layers import FILES_KEY, LayerFusionRecompose, LayerFusionSaveLayers
from support.flattening import flatten_file, lit_scene
from support.layered_readers import READERS, png_pixels, real_rgba

BLENDS_BY_KEY = {key: blend for blend in light_shadow.BLENDS for key in (blend.psd_key.decode(), blend.ora_op)}


@pytest.fixture
def output_dir(tmp_path):
    import folder_paths

    before = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_output_directory(before)


def images(seed: int = 0, sets: int = 2):
    """(foreground RGBA: the real soft-alpha image and a variant, background, composite, mask) as ComfyUI tensors."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.from_numpy(real_rgba()).float() / 255.0
    fg = torch.stack([base, base.flip(1)][:sets])
    bg = torch.rand(sets, 128, 128, 3, generator=gen)
    composite = torch.rand(sets, 128, 128, 3, generator=gen)
    mask = torch.rand(sets, 128, 128, generator=gen)
    return fg, bg, composite, mask


def to_u8(t: torch.Tensor) -> np.ndarray:
    return layered_files.to_uint8(t)


@pytest.mark.parametrize("choice", ["psd", "ora", "psd and ora"])
def test_save_layers_writes_one_file_per_set_that_reads_back_exactly(output_dir, choice):
    fg, bg, composite, mask = images()
    out = LayerFusionSaveLayers.execute(fg, bg, choice, "LayerFusion/layers", composite=composite, mask=mask)
    files = out.ui[FILES_KEY]
    kinds = choice.split(" and ")
    assert [f["format"] for f in files] == kinds * 2 and all(f["type"] == "output" for f in files)
    assert len(out.ui["images"]) == 2  # a preview of each file's visible stack
    for index in range(2):
        for entry in files[index * len(kinds):(index + 1) * len(kinds)]:
            path = output_dir / entry["subfolder"] / entry["filename"]
            assert path.is_file() and entry["subfolder"] == "LayerFusion"
            layers, _merged, size = READERS[entry["format"]](path)
            assert size == (128, 128)
            assert [(layer.name, layer.visible) for layer in layers] == [
                ("background", True), ("foreground", True), ("composite", False), ("mask", False)]
            assert np.array_equal(layers[1].pixels, to_u8(fg[index]))  # the straight alpha kept exactly
            assert np.array_equal(layers[0].pixels[..., :3], to_u8(bg[index])) and (layers[0].pixels[..., 3] == 255).all()
            assert np.array_equal(layers[2].pixels[..., :3], to_u8(composite[index]))
            assert np.array_equal(layers[3].pixels[..., 0], to_u8(mask[index][..., None])[..., 0])


def test_save_layers_numbers_files_on_and_takes_one_background_for_every_set(output_dir):
    fg, bg, _composite, _mask = images()
    first = LayerFusionSaveLayers.execute(fg, bg[:1], "psd", "sets").ui[FILES_KEY]
    second = LayerFusionSaveLayers.execute(fg, bg[:1], "psd", "sets").ui[FILES_KEY]
    names = [f["filename"] for f in first + second]
    assert names == ["sets_00001_.psd", "sets_00002_.psd", "sets_00003_.psd", "sets_00004_.psd"]
    layers, _, _ = READERS["psd"](output_dir / names[1])
    assert [layer.name for layer in layers] == ["background", "foreground"]
    assert np.array_equal(layers[0].pixels[..., :3], to_u8(bg[0]))


@pytest.mark.parametrize("case, inputs, match", [
    ("RGB where RGBA is needed", lambda fg, bg: (fg[..., :3], bg), r"input 'foreground': has shape 2x128x128x3, expected .*4\].*Join Image with Alpha"),
    ("mismatched sizes", lambda fg, bg: (fg, bg[:, :64]), r"input 'background': is 128x64, the foreground is 128x128"),
    ("empty batch", lambda fg, bg: (fg[:0], bg), r"input 'foreground': is an empty batch"),
    ("batch counts", lambda fg, bg: (fg, torch.cat([bg, bg, bg])), r"input 'background': has 6 images, the foreground has 2"),
])
def test_save_layers_refuses_bad_inputs_by_name_and_writes_nothing(output_dir, case, inputs, match):
    fg, bg, _composite, _mask = images()
    with pytest.raises(ValueError, match=r"^LayerFusion Save Layers: " + match):
        LayerFusionSaveLayers.execute(*inputs(fg, bg), "psd", "bad")
    assert not list(output_dir.rglob("*.psd"))


def test_recompose_places_the_foreground_and_composites_it_with_straight_alpha():
    fg, bg, _composite, _mask = images(sets=1)
    canvas = torch.rand(1, 160, 200, 3, generator=torch.Generator().manual_seed(4))
    image, mask = LayerFusionRecompose.execute(fg, canvas, 50, 20, 1.0, "1 = transparent (ComfyUI)").result
    assert image.shape == (1, 160, 200, 3) and mask.shape == (1, 160, 200)
    a = fg[0, ..., 3:]
    inside = fg[0, ..., :3] * a + canvas[0, 20:148, 50:178] * (1 - a)  # the naive over, where the foreground is
    assert torch.allclose(image[0, 20:148, 50:178], inside, atol=1e-6)
    assert torch.equal(image[0, :20], canvas[0, :20]) and torch.equal(image[0, :, :50], canvas[0, :, :50])
    assert torch.allclose(mask[0, 20:148, 50:178], 1 - fg[0, ..., 3]) and (mask[0, :20] == 1).all()
    _, alpha = LayerFusionRecompose.execute(fg, canvas, 50, 20, 1.0, "1 = opaque (alpha)").result
    assert torch.allclose(alpha, 1 - mask)


def test_recompose_scaled_down_fits_and_a_transparent_background_stays_transparent():
    fg, _bg, _composite, _mask = images(sets=1)
    clear = torch.zeros(1, 64, 64, 4)
    image, mask = LayerFusionRecompose.execute(fg, clear, 0, 0, 0.5, "1 = opaque (alpha)").result
    assert image.shape == (1, 64, 64, 4)
    assert torch.allclose(image[..., 3], mask)  # over nothing, the result's alpha is the placed alpha
    assert 0 < mask.mean() < 1


def test_recompose_refuses_rgb_for_the_foreground():
    fg, bg, _composite, _mask = images(sets=1)
    with pytest.raises(ValueError, match=r"^LayerFusion Recompose: input 'foreground': has shape 1x128x128x3"):
        LayerFusionRecompose.execute(fg[..., :3], bg, 0, 0, 1.0, "1 = transparent (ComfyUI)")


# ---- light and shadow ------------------------------------------------------------------------------
def lit_sets(space: str = "srgb"):
    """(foreground: the real soft-alpha image and its mirror, one background, their composites, in which
    each object casts a shadow and reflects light), as ComfyUI tensors."""
    fg = images()[0]
    background = lit_scene(fg[0], seed=3, space=space)[0]
    return fg, background, torch.cat([lit_scene(f, seed=3, space=space)[1] for f in fg])


@pytest.mark.parametrize("kind", layered_files.FORMATS)
def test_light_and_shadow_layers_go_between_and_the_file_flattens_back_to_the_composite(output_dir, kind):
    fg, bg, composite = lit_sets()
    _, _, _, mask = images()
    out = LayerFusionSaveLayers.execute(fg, bg, kind, "lit", composite=composite, mask=mask, light_and_shadow=True)
    keys = {"psd": ("norm", "mul ", "lddg"), "ora": ("svg:src-over", "svg:multiply", "svg:plus")}[kind]
    for index, entry in enumerate(out.ui[FILES_KEY]):
        read, merged, _size = READERS[kind](output_dir / entry["subfolder"] / entry["filename"])
        assert [(layer.name, layer.visible, layer.blend) for layer in read] == [
            ("background", True, keys[0]), ("shadow", True, keys[1]), ("light", True, keys[2]), ("foreground", True, keys[0]),
            ("composite", False, keys[0]), ("mask", False, keys[0])]
        assert np.array_equal(read[3].pixels, to_u8(fg[index])) and np.array_equal(read[4].pixels[..., :3], to_u8(composite[index]))
        assert read[1].pixels[..., 3].any() and read[2].pixels[..., 3].any()  # a shadow and a light, each somewhere
        want = to_u8(composite[index]).astype(int)
        shows, clear = fg[index, ..., 3].numpy() < 1, fg[index, ..., 3].numpy() == 0
        ours = layered_files.merged([layered_files.Layer(r.name, r.pixels, r.visible, BLENDS_BY_KEY[r.blend]) for r in read])
        naive = np.round(flatten_file(read) * 255).astype(int)
        for flat in (ours[..., :3].astype(int), naive[..., :3], merged[..., :3].astype(int)):
            error = np.abs(flat - want).max(axis=-1)
            assert error[shows].max() <= 1 and error[clear].max() <= 1
        import folder_paths

        preview = out.ui["images"][index]  # the node's preview: the visible stack, so the composite
        shown = png_pixels(Path(folder_paths.get_temp_directory()) / preview["subfolder"] / preview["filename"])
        assert np.abs(shown[..., :3].astype(int) - want).max(axis=-1)[shows].max() <= 1


def test_light_and_shadow_off_without_a_composite_is_fine_and_on_is_refused_by_name(output_dir):
    fg, bg, _composite = lit_sets()
    LayerFusionSaveLayers.execute(fg, bg, "psd", "plain", light_and_shadow=False)
    with pytest.raises(ValueError, match=r"^LayerFusion Save Layers: input 'light_and_shadow': is on, but no composite is "
                                         r"connected.*Connect the composite"):
        LayerFusionSaveLayers.execute(fg, bg, "ora", "lit", light_and_shadow=True)
    assert not list(output_dir.rglob("lit*"))
