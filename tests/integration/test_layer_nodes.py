"""LayerFusion Save Layers and LayerFusion Recompose as ComfyUI runs them (in-process): files in
the output folder that independent readers give back exactly, errors for people, and the
recomposition against the naive over. With several objects per set (``foregrounds``, K): the same
bytes as before for K = 1, K object layers in order for K = 2 (LayerFusion Layers too)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from layerfusion.layerfusion_core import layered_files, light_shadow
from layerfusion.nodes.layers import FILES_KEY, LayerFusionRecompose, LayerFusionSaveLayers
from layerfusion.nodes.native_layers import LayerFusionLayers
from support.flattening import flatten_file, lit_objects, lit_scene
from support.layered_readers import READERS, png_pixels, real_objects, real_rgba

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


# ---- several objects per set (foregrounds = K; the foreground batch K x N, set by set, bottom first) ----
def object_sets(space: str = "srgb"):
    """(foreground [4, 128, 128, 4]: 2 sets of 2 objects (`real_objects`, and the same mirrored), one
    background, the sets' composites, in which the objects together cast a shadow and reflect light)."""
    objects = torch.from_numpy(real_objects()).float() / 255.0
    fg = torch.cat([objects, objects.flip(2)])
    background = lit_objects(fg[:2], seed=5, space=space)[0]
    return fg, background, torch.cat([lit_objects(fg[2 * n:2 * n + 2], seed=5, space=space)[1] for n in range(2)])


def file_contents(path: Path) -> list[tuple[str, bytes]] | bytes:
    """A PSD's bytes; an OpenRaster file's members and their bytes (its zip records the time of writing)."""
    if path.suffix == ".psd":
        return path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, info.compress_type, archive.read(info)) for info in archive.infolist()]


@pytest.mark.parametrize("lit", [False, True])
def test_one_foreground_per_set_named_so_is_the_default_call_to_the_byte(output_dir, lit):
    fg, bg, composite = lit_sets()
    mask = images()[3]
    default = LayerFusionSaveLayers.execute(fg, bg, "psd and ora", "default", composite=composite, mask=mask,
                                            light_and_shadow=lit).ui[FILES_KEY]
    named = LayerFusionSaveLayers.execute(fg, bg, "psd and ora", "named", composite=composite, mask=mask, light_and_shadow=lit,
                                          foregrounds=1).ui[FILES_KEY]
    assert [f["format"] for f in default] == [f["format"] for f in named] == ["psd", "ora"] * 2
    for a, b in zip(default, named):
        assert file_contents(output_dir / a["subfolder"] / a["filename"]) == file_contents(output_dir / b["subfolder"] / b["filename"])
    doc, layer_images = LayerFusionLayers.execute(fg, bg, 1, composite=composite, mask=mask, light_and_shadow=lit).result
    doc_k, layer_images_k = LayerFusionLayers.execute(fg, bg, 1, composite=composite, mask=mask, light_and_shadow=lit,
                                                      foregrounds=1).result
    assert torch.equal(layer_images, layer_images_k) and [i["name"] for i in doc["layers"]] == [i["name"] for i in doc_k["layers"]]
    placed = LayerFusionRecompose.execute(fg, bg, 9, -4, 0.75, "1 = transparent (ComfyUI)").result
    placed_k = LayerFusionRecompose.execute(fg, bg, 9, -4, 0.75, "1 = transparent (ComfyUI)", foregrounds=1).result
    assert all(torch.equal(a, b) for a, b in zip(placed, placed_k))


@pytest.mark.parametrize("kind", layered_files.FORMATS)
def test_two_foregrounds_per_set_are_two_layers_in_order_and_the_file_flattens_to_them_over_the_background(output_dir, kind):
    fg, bg, composite = object_sets()
    masks = torch.rand(4, 128, 128, generator=torch.Generator().manual_seed(6))
    out = LayerFusionSaveLayers.execute(fg, bg, kind, "two", composite=composite, mask=masks, foregrounds=2)
    files = out.ui[FILES_KEY]
    assert len(files) == 2 and len(out.ui["images"]) == 2  # one file per set, not per object
    for index, entry in enumerate(files):
        read, merged, _size = READERS[kind](output_dir / entry["subfolder"] / entry["filename"])
        assert [(layer.name, layer.visible) for layer in read] == [
            ("background", True), ("foreground 1", True), ("foreground 2", True), ("composite", False), ("mask 1", False),
            ("mask 2", False)]
        bottom, top = fg[2 * index], fg[2 * index + 1]
        assert np.array_equal(read[1].pixels, to_u8(bottom)) and np.array_equal(read[2].pixels, to_u8(top))
        assert np.array_equal(read[4].pixels[..., 0], to_u8(masks[2 * index][..., None])[..., 0])
        assert np.array_equal(read[5].pixels[..., 0], to_u8(masks[2 * index + 1][..., None])[..., 0])
        by_hand = to_u8(bg[0]) / 255.0  # the composite built by hand: each object over what is below it, as stored
        for layer in (bottom, top):
            stored = to_u8(layer) / 255.0
            by_hand = stored[..., 3:] * stored[..., :3] + (1 - stored[..., 3:]) * by_hand
        want = np.round(by_hand * 255).astype(int)
        naive = np.round(flatten_file(read) * 255).astype(int)
        for flat in (naive[..., :3], merged[..., :3].astype(int)):
            assert np.abs(flat - want).max() <= 1


@pytest.mark.parametrize("kind", layered_files.FORMATS)
def test_with_two_foregrounds_light_and_shadow_go_below_both_and_the_file_flattens_back_to_the_composite(output_dir, kind):
    fg, bg, composite = object_sets()
    out = LayerFusionSaveLayers.execute(fg, bg, kind, "lit_two", composite=composite, light_and_shadow=True, foregrounds=2)
    keys = {"psd": ("norm", "mul ", "lddg"), "ora": ("svg:src-over", "svg:multiply", "svg:plus")}[kind]
    for index, entry in enumerate(out.ui[FILES_KEY]):
        read, merged, _size = READERS[kind](output_dir / entry["subfolder"] / entry["filename"])
        assert [(layer.name, layer.blend) for layer in read] == [
            ("background", keys[0]), ("shadow", keys[1]), ("light", keys[2]), ("foreground 1", keys[0]), ("foreground 2", keys[0]),
            ("composite", keys[0])]
        assert read[1].pixels[..., 3].any() and read[2].pixels[..., 3].any()
        want = to_u8(composite[index]).astype(int)
        alphas = fg[2 * index:2 * index + 2, ..., 3].numpy()
        shows, clear = (alphas < 1).all(axis=0), (alphas == 0).all(axis=0)
        naive = np.round(flatten_file(read) * 255).astype(int)
        for flat in (naive[..., :3], merged[..., :3].astype(int)):
            error = np.abs(flat - want).max(axis=-1)
            assert shows.sum() > 1000 and error[shows].max() <= 1 and error[clear].max() <= 1


@pytest.mark.parametrize("case, inputs, match", [
    ("rows not K x N", lambda fg, bg, masks: (fg[:3], bg, {}), r"input 'foreground': has 3 images, expected foregrounds x sets = 2 x N.*"
                                                                 r"Set foregrounds to the number of objects"),
    ("a background per object", lambda fg, bg, masks: (fg, torch.cat([bg] * 4), {}),
     r"input 'background': has 4 images, the foreground has 2 sets \(4 images, 2 per set\)\. Give one per set"),
    ("a mask per set", lambda fg, bg, masks: (fg, bg, {"mask": masks[:2]}), r"input 'mask': has 2 images, the foreground has 4"),
    ("K out of range", lambda fg, bg, masks: (fg, bg, {"foregrounds": 5}), r"input 'foregrounds': is 5, expected 1 to 4"),
])
def test_with_two_foregrounds_a_batch_that_does_not_fit_is_refused_by_name_and_nothing_is_written(output_dir, case, inputs, match):
    fg, bg, _composite = object_sets()
    masks = torch.rand(4, 128, 128, generator=torch.Generator().manual_seed(6))
    fg_in, bg_in, extra = inputs(fg, bg, masks)
    options = {"foregrounds": 2, **extra}
    with pytest.raises(ValueError, match=r"^LayerFusion Save Layers: " + match):
        LayerFusionSaveLayers.execute(fg_in, bg_in, "psd", "bad", **options)
    assert not list(output_dir.rglob("*.psd"))
    with pytest.raises(ValueError, match=r"^LayerFusion Layers: " + match):
        LayerFusionLayers.execute(fg_in, bg_in, 0, **options)
    if "mask" not in extra:
        with pytest.raises(ValueError, match=r"^LayerFusion Recompose: " + match):
            LayerFusionRecompose.execute(fg_in, bg_in, 0, 0, 1.0, "1 = opaque (alpha)", **options)


def test_layers_with_two_foregrounds_stacks_the_chosen_sets_objects_and_counts_sets_not_images():
    fg, bg, composite = object_sets("linear")
    doc, layer_images = LayerFusionLayers.execute(fg, bg, 1, composite=composite, light_and_shadow=True, foregrounds=2).result
    assert [(item["name"], item.get("blend_mode")) for item in doc["layers"]] == [
        ("background", None), ("shadow", "multiply"), ("light", "linear-dodge"), ("foreground 1", None), ("foreground 2", None),
        ("composite", None)]
    assert torch.equal(doc["layers"][3]["image"], fg[2:3]) and torch.equal(doc["layers"][4]["image"], fg[3:4])
    assert layer_images.shape == (6, 128, 128, 4)
    with pytest.raises(ValueError, match=r"^LayerFusion Layers: input 'set_index': is 2, the foreground has 2 set\(s\)"):
        LayerFusionLayers.execute(fg, bg, 2, foregrounds=2)


def test_recompose_with_two_foregrounds_moves_both_objects_of_each_set_together():
    fg, _bg, _composite = object_sets()
    canvas = torch.rand(1, 160, 200, 3, generator=torch.Generator().manual_seed(4))
    image, mask = LayerFusionRecompose.execute(fg, canvas, 50, 20, 1.0, "1 = transparent (ComfyUI)", foregrounds=2).result
    assert image.shape == (2, 160, 200, 3) and mask.shape == (2, 160, 200)
    for index in range(2):
        inside = canvas[0, 20:148, 50:178]
        for layer in fg[2 * index:2 * index + 2]:  # the naive over, one object after the other, bottom first
            inside = layer[..., :3] * layer[..., 3:] + inside * (1 - layer[..., 3:])
        assert torch.allclose(image[index, 20:148, 50:178], inside, atol=1e-6)
        union = 1 - (1 - fg[2 * index, ..., 3]) * (1 - fg[2 * index + 1, ..., 3])
        assert torch.allclose(mask[index, 20:148, 50:178], 1 - union, atol=1e-6) and (mask[index, :20] == 1).all()
        assert torch.equal(image[index, :20], canvas[0, :20])
