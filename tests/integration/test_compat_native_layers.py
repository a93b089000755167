"""Compatibility tier: current ComfyUI's own layer nodes (``comfy_extras/nodes_compositor.py``:
Create Layered Image `ImageCompositor`, Add Layer `AddLayer`), which the pinned 0.3.75 lacks,
emulated from that source (`layerfusion_dev.native_nodes.EmulatedImageCompositor` and
`EmulatedAddLayer`, over `layerfusion_dev.native_compositor`: `document_items` sorted by z_index,
`expand_item_frames`, `frame_alpha` = alpha * (1 - mask), the "normal" composite in linear light).

LayerFusion Layers' LAYERS value goes through them and gives back our pixels; Transparent Decode's
and Recompose's IMAGE + MASK agree with Add Layer's mask (1 = transparent); the workflow that ends
in Create Layered Image validates where the node exists; and on this host, without the node, our
node still loads and runs. Where the host has the real nodes (``COMFYUI_PATH`` at a current
ComfyUI), the real reading and compositing are checked against the emulation too.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from layerfusion.nodes import NODES
from layerfusion.nodes.layers import LayerFusionRecompose
from layerfusion.nodes.native_layers import LayerFusionLayers
from layerfusion.nodes.transparent import MASK_TRANSPARENT
from layerfusion_dev.native_compositor import document_items, expand_item_frames, frame_alpha
from layerfusion_dev.native_nodes import EMULATED, EmulatedAddLayer, EmulatedImageCompositor
from layerfusion_dev.paths import REPO
from layerfusion_dev.workflows import load_api, on_tiny_model
from support.flattening import flatten_layers_value, lit_scene
from support.layered_readers import real_rgba

WORKFLOW = "layerfusion_create_layered_image"


def a_set(sets: int = 2, seed: int = 0):
    """(foreground RGBA with real soft alpha, background, composite, mask), 128x128."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.from_numpy(real_rgba()).float() / 255.0
    fg = torch.stack([base, base.flip(1)][:sets])
    return fg, torch.rand(sets, 128, 128, 3, generator=gen), torch.rand(sets, 128, 128, 3, generator=gen), \
        torch.rand(sets, 128, 128, generator=gen)


def eight_bit(t: torch.Tensor) -> np.ndarray:
    return np.rint(t.double().numpy().clip(0, 1) * 255.0) / 255.0


def to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def to_srgb(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(np.maximum(c, 0), 1 / 2.4) - 0.055)


def layers_of(fg, bg, composite=None, mask=None, set_index=0) -> dict:
    return LayerFusionLayers.execute(fg, bg, set_index, composite=composite, mask=mask).result[0]


def test_the_layers_value_is_currents_format_bottom_first_with_the_foregrounds_straight_alpha():
    fg, bg, composite, mask = a_set()
    out = LayerFusionLayers.execute(fg, bg[:1], 1, composite=composite, mask=mask)
    doc, images = out.result
    assert doc["version"] == 1 and doc["canvas"] == (128, 128)
    items = doc["layers"]
    assert [(i["name"], i["visible"]) for i in items] == [("background", True), ("foreground", True), ("composite", False), ("mask", False)]
    assert all(i["type"] == "raster" and i["x"] == 0 and i["y"] == 0 and i["z_index"] == 0 and "mask" not in i for i in items)
    assert torch.equal(items[1]["image"], fg[1:2]) and torch.equal(items[0]["image"], bg[:1])  # one background for every set
    assert torch.equal(items[2]["image"], composite[1:2]) and torch.equal(items[3]["image"][..., 0], mask[1:2])
    assert images.shape == (4, 128, 128, 4) and torch.equal(images[1], fg[1]) and (images[0, ..., 3] == 1).all()
    assert len(out.ui["images"]) == 4  # shown on the node: the Layer Editor opens on a node showing several images


def test_the_emulated_reader_gets_the_stack_in_order_with_the_foregrounds_exact_alpha():
    fg, bg, composite, mask = a_set()
    frames = expand_item_frames(document_items(layers_of(fg, bg, composite, mask, set_index=1)))
    assert [(f["name"], f["visible"]) for f in frames] == [("background", True), ("foreground", True), ("composite", False), ("mask", False)]
    alphas = [frame_alpha(f["tensor"], f["mask"]) for f in frames]
    assert alphas[0] is None and torch.equal(alphas[1], fg[1:2, ..., 3]) and torch.equal(frames[1]["tensor"][..., :3], fg[1:2, ..., :3])
    assert torch.equal(frames[0]["tensor"], bg[1:2])


def test_create_layered_image_gives_back_the_foreground_over_the_background_in_linear_light():
    fg, bg, composite, mask = a_set(sets=1)
    image, out_mask = EmulatedImageCompositor.execute(layers_of(fg, bg, composite, mask), {}).result
    assert image.shape == (1, 128, 128, 3) and not out_mask.any()  # opaque: RGB and an all-zero MASK
    a = eight_bit(fg[0, ..., 3])[..., None]
    colour, under = eight_bit(fg[0, ..., :3]), eight_bit(bg[0])
    expected = to_srgb(a * to_linear(colour) + (1 - a) * to_linear(under))  # naive, float64; composite and mask hidden
    got = image[0].double().numpy()
    assert np.abs(got - expected).max() < 2e-5
    opaque, clear = a[..., 0] == 1, a[..., 0] == 0
    assert opaque.any() and clear.any()
    assert np.abs(got[opaque] - colour[opaque]).max() < 2e-5 and np.abs(got[clear] - under[clear]).max() < 2e-5


def test_with_the_background_hidden_the_result_is_the_foreground_with_its_alpha():
    fg, bg, _composite, _mask = a_set(sets=1)
    doc = layers_of(fg, bg)
    doc["layers"][0]["visible"] = False  # what the Layer Editor's eye does
    image, out_mask = EmulatedImageCompositor.execute(doc, {}).result
    assert image.shape == (1, 128, 128, 4)
    alpha = eight_bit(fg[0, ..., 3])
    assert np.abs(image[0, ..., 3].double().numpy() - alpha).max() < 1e-6
    assert torch.allclose(out_mask, 1 - image[..., 3])  # MASK 1 = transparent
    seen = alpha > 0
    assert np.abs(image[0, ..., :3].double().numpy()[seen] - eight_bit(fg[0, ..., :3])[seen]).max() < 2e-5


def test_the_hidden_composite_is_there_to_compare_with():
    fg, bg, composite, _mask = a_set(sets=1)
    plain = EmulatedImageCompositor.execute(layers_of(fg, bg), {}).result[0]
    doc = layers_of(fg, bg, composite)
    assert torch.equal(EmulatedImageCompositor.execute(doc, {}).result[0], plain)
    doc["layers"][2]["visible"] = True
    shown = EmulatedImageCompositor.execute(doc, {}).result[0]
    assert np.abs(shown[0].double().numpy() - eight_bit(composite[0])).max() < 2e-5


def test_add_layer_appends_its_layer_on_top_of_our_stack_and_keeps_the_canvas():
    fg, bg, _composite, _mask = a_set(sets=1)
    red = torch.zeros(1, 16, 16, 3)
    red[..., 0] = 1.0
    doc = EmulatedAddLayer.execute(red, layers=layers_of(fg, bg), name="sticker", x=100, y=4).result[0]
    assert doc["canvas"] == (128, 128)
    frames = expand_item_frames(document_items(doc))
    assert [f["name"] for f in frames] == ["background", "foreground", "sticker"]
    image = EmulatedImageCompositor.execute(doc, {}).result[0]
    assert torch.allclose(image[0, 4:20, 100:116], red[0], atol=1e-5)


def test_transparent_decodes_rgb_and_mask_give_add_layer_the_rgbas_alpha():
    """Transparent Decode's MASK at its default polarity is 1 - alpha (nodes/transparent.py): with
    its RGB it makes the same layer as its RGBA alone. Both together would apply the alpha twice."""
    fg = a_set(sets=1)[0]
    mask = 1.0 - fg[..., 3]  # MASK_TRANSPARENT, the default
    from_rgba = EmulatedAddLayer.execute(fg).result[0]
    from_rgb_and_mask = EmulatedAddLayer.execute(fg[..., :3], mask=mask).result[0]
    alpha = [frame_alpha(f["tensor"], f["mask"]) for doc in (from_rgba, from_rgb_and_mask) for f in expand_item_frames(document_items(doc))]
    assert torch.equal(alpha[0], fg[..., 3]) and torch.allclose(alpha[1], fg[..., 3], atol=1e-6)
    both = EmulatedAddLayer.execute(fg, mask=mask).result[0]["layers"][0]
    assert torch.allclose(frame_alpha(both["image"], both["mask"]), fg[..., 3] ** 2)


def test_recomposes_image_and_mask_give_add_layer_the_placed_foregrounds_alpha():
    fg = a_set(sets=1)[0]
    canvas = torch.rand(1, 160, 200, 3, generator=torch.Generator().manual_seed(4))
    image, mask = LayerFusionRecompose.execute(fg, canvas, 50, 20, 1.0, MASK_TRANSPARENT).result
    item = EmulatedAddLayer.execute(image, mask=mask).result[0]["layers"][0]
    alpha = frame_alpha(item["image"], item["mask"])
    assert torch.allclose(alpha[0, 20:148, 50:178], fg[0, ..., 3], atol=1e-6) and not alpha[0, :20].any()


def test_a_set_index_past_the_sets_is_refused_by_name():
    fg, bg, _composite, _mask = a_set()
    with pytest.raises(ValueError, match=r"^LayerFusion Layers: input 'set_index': is 2, the foreground has 2 set\(s\) \(0 to 1\)\. Choose"):
        LayerFusionLayers.execute(fg, bg, 2)
    with pytest.raises(ValueError, match=r"^LayerFusion Layers: input 'foreground': has shape 2x128x128x3"):
        LayerFusionLayers.execute(fg[..., :3], bg, 0)


# ---- light and shadow: blend modes Create Layered Image applies -------------------------------------
def lit_set(sets: int = 2):
    """(foreground with real soft alpha, one background, composites made by an over in linear light of
    that background shadowed and lit), as Create Layered Image would recompose them."""
    fg = a_set(sets)[0]
    background = lit_scene(fg[0], seed=2, space="linear")[0]
    return fg, background, torch.cat([lit_scene(f, seed=2, space="linear")[1] for f in fg])


def test_with_light_and_shadow_create_layered_image_gives_back_the_composite_where_the_foreground_is_not_opaque():
    fg, bg, composite = lit_set()
    _, _, _, mask = a_set()
    doc, images = LayerFusionLayers.execute(fg, bg, 1, composite=composite, mask=mask, light_and_shadow=True).result
    assert [(i["name"], i["visible"], i.get("blend_mode")) for i in doc["layers"]] == [
        ("background", True, None), ("shadow", True, "multiply"), ("light", True, "linear-dodge"), ("foreground", True, None),
        ("composite", False, None), ("mask", False, None)]
    assert images.shape == (6, 128, 128, 4) and torch.equal(doc["layers"][3]["image"], fg[1:2])
    got = flatten_layers_value(doc)
    want = eight_bit(composite[1])
    shows, clear = fg[1, ..., 3].numpy() < 1, fg[1, ..., 3].numpy() == 0
    error = np.abs(got[..., :3] - want).max(axis=-1) * 255
    assert error[shows].max() <= 1.0 and error[clear].max() <= 0.5 and (got[..., 3] == 1).all()
    plain = flatten_layers_value(layers_of(fg[1:], bg, composite[1:]))
    assert np.abs(plain[..., :3] - want).max(axis=-1)[shows].max() * 255 > 5  # without the layers: the test can tell


def test_light_and_shadow_without_a_composite_is_refused_by_name():
    fg, bg, _composite, _mask = a_set()
    with pytest.raises(ValueError, match=r"^LayerFusion Layers: input 'light_and_shadow': is on, but no composite"):
        LayerFusionLayers.execute(fg, bg, 0, light_and_shadow=True)


# ---- the node on this host and on one with io.Layers ---------------------------------------------
def test_the_node_loads_on_this_host_with_the_layers_type_by_name():
    """On 0.3.75 (no io.Layers) the LAYERS output is a custom type of that name; the schema passes
    the host's own validation (as when the pack loads) and the extension lists the node."""
    from comfy_api.latest import io

    from layerfusion.nodes import LayerFusionExtension

    assert LayerFusionLayers in asyncio.run(LayerFusionExtension().get_node_list())
    schema = LayerFusionLayers.GET_SCHEMA()
    assert [output.io_type for output in schema.outputs] == ["LAYERS", "IMAGE"]
    assert LayerFusionLayers.GET_NODE_INFO_V1()["output"] == ["LAYERS", "IMAGE"]
    assert hasattr(io, "Layers") or type(schema.outputs[0]).Parent.__name__ == "CustomComfyType"


def test_the_node_takes_io_layers_where_the_host_defines_it(monkeypatch):
    """Current ComfyUI (comfy_api/latest/_io.py) defines `Layers` with io_type LAYERS: the node uses it."""
    from comfy_api.latest import io

    current = io.Custom("LAYERS")
    monkeypatch.setattr(io, "Layers", current, raising=False)
    output = LayerFusionLayers.define_schema().outputs[0]
    assert isinstance(output, current.Output) and output.io_type == "LAYERS"


# ---- the shipped workflow against a node registry that has the layer nodes -------------------------
@pytest.fixture
def registry_with_layer_nodes(monkeypatch, tmp_path):
    """ComfyUI's node registry (in-process) with the pack's nodes, the tiny test loader, the
    emulated layer nodes where the host lacks them, and the LayerDiffuse file names listed."""
    import folder_paths
    import nodes

    from layerfusion_dev.testnodes.nodes import LayerFusionTestTinySDXL

    for node in [*NODES, LayerFusionTestTinySDXL]:
        monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, node.__name__, node)
    for node in EMULATED:
        if node.GET_SCHEMA().node_id not in nodes.NODE_CLASS_MAPPINGS:
            monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, node.GET_SCHEMA().node_id, node)
    for name in ("layer_xl_transparent_attn.safetensors", "vae_transparent_decoder.safetensors"):
        (tmp_path / name).write_bytes(b"")
    folder_paths.add_model_folder_path("layer_model", str(tmp_path))
    folder_paths.filename_list_cache.clear()
    return nodes.NODE_CLASS_MAPPINGS


def validate(graph: dict) -> tuple:
    import execution

    return asyncio.run(execution.validate_prompt("compat", graph, None))


def test_the_create_layered_image_workflow_validates_where_the_node_exists(registry_with_layer_nodes):
    graph = on_tiny_model(load_api(WORKFLOW), size=64, steps=2)
    assert graph["compositor"]["class_type"] == "ImageCompositor" and graph["layers"]["class_type"] == "LayerFusionLayers"
    valid, error, outputs, node_errors = validate(graph)
    assert valid, (error, node_errors)
    assert set(outputs) == {"compositor", "save"}
    wrong = on_tiny_model(load_api(WORKFLOW), size=64, steps=2)
    wrong["compositor"]["inputs"]["layers"] = ["layers", 1]  # the IMAGE batch where LAYERS is expected
    valid, _error, _outputs, node_errors = validate(wrong)
    assert not valid and "received_type(IMAGE) mismatch input_type(LAYERS)" in str(node_errors)


# ---- the real nodes, where the host has them ------------------------------------------------------
def test_the_real_reader_and_compositor_agree_with_the_emulation_where_the_host_has_them():
    try:
        from comfy_extras import nodes_compositor as real
    except ImportError:
        import comfyui_version

        pytest.skip(f"ComfyUI {comfyui_version.__version__} has no ImageCompositor (comfy_extras/nodes_compositor.py)")
    fg, bg, composite, mask = a_set(sets=1)
    doc = layers_of(fg, bg, composite, mask)
    frames = real.expand_item_frames(real.document_items(doc))
    alphas = [real.frame_alpha(f["tensor"], f["mask"]) for f in frames]
    assert [f["name"] for f in frames] == ["background", "foreground", "composite", "mask"] and torch.equal(alphas[1], fg[:1, ..., 3])
    out = real.composite_from_state([f["tensor"] for f in frames], real.state_from_items(frames, real.document_canvas(doc)), alphas)
    image, _mask = real.composite_outputs(out)
    assert torch.allclose(image, EmulatedImageCompositor.execute(doc, {}).result[0], atol=1e-5)
    fg, bg, composite = lit_set(sets=1)
    lit = LayerFusionLayers.execute(fg, bg, 0, composite=composite, light_and_shadow=True).result[0]
    image = real.ImageCompositor.execute(lit, {}).result[0]  # the blend modes as the real node applies them
    assert np.abs(image[0].double().numpy() - flatten_layers_value(lit)[..., :3]).max() < 2e-5
    shows = fg[0, ..., 3].numpy() < 1
    assert (np.abs(image[0].double().numpy() - eight_bit(composite[0])).max(axis=-1)[shows] * 255).max() <= 1.0


def test_the_readme_shows_the_wiring_with_the_nodes_own_names():
    text = (REPO / "README.md").read_text()
    section = text.split("#### Into ComfyUI's own layer nodes")[1].split("\n### ")[0]
    wiring = section.split("```")[1]
    info = LayerFusionLayers.GET_NODE_INFO_V1()
    widgets = ("set_index", "light_and_shadow", "foregrounds")  # the wiring shows sockets
    inputs = [name for part in ("required", "optional") for name in info["input_order"].get(part, []) if name not in widgets]
    assert all(f"-> {name} " in wiring for name in inputs), wiring
    assert all(f"-> {name} " in wiring for name in info["output_name"]), wiring
    for node in ("Transparent Decode", "LayerFusion Layers", "Add Layer", "Create Layered Image"):
        assert node in wiring
    assert "`set_index`" in section and f"`{WORKFLOW}`" in section
    first_limit = text.split("## Known limits")[1].split("\n- ")[1]
    assert "LayerFusion Layers" in first_limit and "0.3.75 has none" in first_limit
