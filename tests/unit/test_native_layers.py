"""The LAYERS value of one layered set (layerfusion_core.native_layers) on plain tensors: which set,
which layers in which order, what each holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layerfusion.layerfusion_core import native_layers
from support.flattening import flatten_layers_value, lit_objects, lit_scene


def a_batch(sets: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(sets, 6, 5, 4, generator=gen), torch.rand(1, 6, 5, 3, generator=gen),
            torch.rand(sets, 6, 5, 3, generator=gen), torch.rand(sets, 6, 5, generator=gen))


def test_the_set_is_picked_by_index_and_a_single_background_serves_every_set():
    fg, bg, composite, mask = a_batch()
    layers = native_layers.set_layers(fg, bg, 2, composite, mask)
    assert [(layer.name, layer.visible) for layer in layers] == [
        ("background", True), ("foreground", True), ("composite", False), ("mask", False)]
    assert torch.equal(layers[0].image, bg) and torch.equal(layers[1].image, fg[2:3]) and torch.equal(layers[2].image, composite[2:3])
    assert layers[3].image.shape == (1, 6, 5, 3) and all(torch.equal(layers[3].image[..., c], mask[2:3]) for c in range(3))


def test_without_composite_and_mask_the_stack_is_background_and_foreground():
    fg, bg, _composite, _mask = a_batch()
    assert [layer.name for layer in native_layers.set_layers(fg, bg, 0)] == ["background", "foreground"]


def test_the_document_is_version_1_on_the_layers_canvas_with_the_list_order_as_the_stack():
    fg, bg, composite, _mask = a_batch()
    doc = native_layers.layers_document(native_layers.set_layers(fg, bg, 1, composite))
    assert doc["version"] == 1 and doc["canvas"] == (5, 6)  # (width, height)
    assert [item["name"] for item in doc["layers"]] == ["background", "foreground", "composite"]
    assert {item["z_index"] for item in doc["layers"]} == {0} and [item["visible"] for item in doc["layers"]] == [True, True, False]
    assert all(item["type"] == "raster" and (item["x"], item["y"]) == (0, 0) for item in doc["layers"])


def test_the_batch_is_rgba_bottom_first_with_rgb_layers_opaque():
    fg, bg, composite, mask = a_batch()
    batch = native_layers.layers_batch(native_layers.set_layers(fg, bg, 1, composite, mask))
    assert batch.shape == (4, 6, 5, 4)
    assert torch.equal(batch[1], fg[1]) and torch.equal(batch[0, ..., :3], bg[0]) and (batch[[0, 2, 3], ..., 3] == 1).all()


def lit_batch(sets: int = 2, seed: int = 0):
    """(foreground [sets, 6, 8, 4] with clear, opaque and soft pixels, background [1, ...], composites
    made by an over in linear light of a shadowed and lit background)."""
    gen = torch.Generator().manual_seed(seed)
    fg = torch.rand(sets, 6, 8, 4, generator=gen)
    fg[..., 3] = torch.tensor([0.0, 1.0, 0.5, 254 / 255, 1 / 255, 0.2, 0.8, 0.35] * 6).reshape(6, 8)
    background = lit_scene(fg[0], seed=seed, space="linear")[0]
    composites = torch.cat([lit_scene(f, seed=seed, space="linear")[1] for f in fg])
    return fg, background, composites


def test_light_and_shadow_items_carry_create_layered_images_blend_modes_between_background_and_foreground():
    fg, bg, composite = lit_batch()
    layers = native_layers.set_layers(fg, bg, 1, composite, light_and_shadow=True)
    doc = native_layers.layers_document(layers)
    assert [(item["name"], item.get("blend_mode")) for item in doc["layers"]] == [
        ("background", None), ("shadow", "multiply"), ("light", "linear-dodge"), ("foreground", None), ("composite", None)]
    assert torch.equal(doc["layers"][3]["image"], fg[1:2]) and doc["layers"][1]["image"].shape == (1, 6, 8, 4)
    assert native_layers.layers_batch(layers).shape == (5, 6, 8, 4)
    with pytest.raises(ValueError, match="light_and_shadow needs the composite"):
        native_layers.set_layers(fg, bg, 0, light_and_shadow=True)


@pytest.mark.parametrize("index", [0, 1])
def test_create_layered_images_flattening_of_the_stack_gives_the_composite_back_where_the_foreground_is_not_opaque(index):
    fg, bg, composite = lit_batch()
    doc = native_layers.layers_document(native_layers.set_layers(fg, bg, index, composite, light_and_shadow=True))
    got = flatten_layers_value(doc)
    assert (got[..., 3] == 1).all()
    error = np.abs(got[..., :3] - np.rint(composite[index].double().numpy() * 255) / 255).max(axis=-1) * 255
    shows = fg[index, ..., 3].numpy() < 1
    assert error[shows].max() <= 1.0
    plain = flatten_layers_value(native_layers.layers_document(native_layers.set_layers(fg, bg, index, composite)))
    assert np.abs(plain[..., :3] - composite[index].numpy()).max(axis=-1)[shows].max() * 255 > 5  # without: the test can tell


# ---- several objects per set (K foregrounds, set by set, bottom first) ------------------------------
def test_a_set_of_k_objects_takes_its_k_rows_bottom_first_and_its_masks_follow_them():
    fg, bg, composite, _mask = a_batch(sets=6)  # 3 sets of 2 objects
    mask = torch.rand(6, 6, 5, generator=torch.Generator().manual_seed(1))
    layers = native_layers.set_layers(fg, bg, 1, composite[:3], mask, foregrounds=2)
    assert [(layer.name, layer.visible) for layer in layers] == [
        ("background", True), ("foreground 1", True), ("foreground 2", True), ("composite", False), ("mask 1", False),
        ("mask 2", False)]
    assert torch.equal(layers[1].image, fg[2:3]) and torch.equal(layers[2].image, fg[3:4]) and torch.equal(layers[3].image, composite[1:2])
    assert torch.equal(layers[4].image[..., 0], mask[2:3]) and torch.equal(layers[5].image[..., 0], mask[3:4])
    assert native_layers.layers_batch(layers).shape == (6, 6, 5, 4)


def test_one_object_per_set_named_so_is_the_default_to_the_bit():
    fg, bg, composite = lit_batch()
    for lit in (False, True):
        default = native_layers.set_layers(fg, bg, 1, composite, light_and_shadow=lit)
        named = native_layers.set_layers(fg, bg, 1, composite, light_and_shadow=lit, foregrounds=1)
        assert [(a.name, a.blend) for a in default] == [(b.name, b.blend) for b in named]
        assert all(torch.equal(a.image, b.image) for a, b in zip(default, named))


def test_create_layered_images_flattening_of_two_lit_objects_gives_the_composite_back_where_no_object_is_opaque():
    gen = torch.Generator().manual_seed(2)
    fg = torch.rand(4, 6, 8, 4, generator=gen)  # 2 sets of 2 objects
    fg[..., 3] = torch.tensor([0.0, 1.0, 0.5, 254 / 255, 1 / 255, 0.2, 0.8, 0.35] * 6).reshape(6, 8)
    fg[1::2, ..., 3] = fg[1::2, ..., 3].flip(-1)  # the upper objects elsewhere opaque and soft
    background = lit_objects(fg[:2], seed=2, space="linear")[0]
    composite = torch.cat([lit_objects(fg[2 * n:2 * n + 2], seed=2, space="linear")[1] for n in range(2)])
    layers = native_layers.set_layers(fg, background, 1, composite, light_and_shadow=True, foregrounds=2)
    doc = native_layers.layers_document(layers)
    assert [(item["name"], item.get("blend_mode")) for item in doc["layers"]] == [
        ("background", None), ("shadow", "multiply"), ("light", "linear-dodge"), ("foreground 1", None), ("foreground 2", None),
        ("composite", None)]
    got = flatten_layers_value(doc)
    shows = (fg[2:4, ..., 3] < 1).all(dim=0).numpy()
    error = np.abs(got[..., :3] - np.rint(composite[1].double().numpy() * 255) / 255).max(axis=-1) * 255
    assert shows.sum() > 10 and error[shows].max() <= 1.0
    plain = flatten_layers_value(native_layers.layers_document(native_layers.set_layers(fg, background, 1, composite, foregrounds=2)))
    assert np.abs(plain[..., :3] - composite[1].numpy()).max(axis=-1)[shows].max() * 255 > 5  # without: the test can tell
