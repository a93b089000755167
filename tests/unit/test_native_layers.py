"""The LAYERS value of one layered set (layerfusion_core.native_layers) on plain tensors: which set,
which layers in which order, what each holds."""

from __future__ import annotations

import torch

from layerfusion.layerfusion_core import native_layers


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
