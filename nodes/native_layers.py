"""`LayerFusion Layers`: a layered set handed to ComfyUI's own layer nodes (Add Layer, Create Layered
Image and its Layer Editor) as their LAYERS value, and as one IMAGE batch of the layers."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..layerfusion_core import native_layers
from .common import CATEGORY, node_error
from .layers import background_input, foreground_input, foregrounds_input, layered_set, light_and_shadow_input
from .previews import intermediate_output, temp_pngs

log = logging.getLogger(__name__)

LAYERS_NODE = "LayerFusion Layers"
MAX_SET = 63  # LayerFusion Empty Latent makes at most 64 sets


def layers_io() -> type[io.ComfyTypeIO]:
    """ComfyUI's LAYERS type: `io.Layers` where the host defines it (current ComfyUI), else a custom
    type of the same name (0.3.75 has none), so the node loads everywhere and connects to Add Layer
    and Create Layered Image wherever they exist."""
    return getattr(io, "Layers", None) or io.Custom(native_layers.LAYERS_TYPE)


class LayerFusionLayers(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionLayers",
            display_name=LAYERS_NODE,
            category=CATEGORY,
            description=(
                "Hand one layered set to ComfyUI's own layer nodes: a LAYERS stack for Add Layer and Create Layered "
                "Image (its Layer Editor), and the same layers as one IMAGE batch. Layers, bottom to top: background, "
                "foreground (its straight alpha kept), composite (hidden) and the mask (hidden) if given, as in "
                "LayerFusion Save Layers (with light_and_shadow, the object's shadow and reflected light between "
                "background and foreground, so Create Layered Image gives back the composite). ComfyUI's layer nodes "
                "are experimental and only in recent versions; on older ones this node still runs and its IMAGE output "
                "works anywhere. With foregrounds = K, the set's K objects are the layers 'foreground 1' (bottom) to "
                "'foreground K'."
            ),
            inputs=[
                foreground_input(),
                background_input(),
                io.Image.Input("composite", optional=True,
                               tooltip="The harmonised composite (the blend stream): a hidden layer above the foreground, "
                                       "to compare with in the Layer Editor."),
                io.Mask.Input("mask", optional=True, tooltip="A mask (e.g. LayerFusion Masks' soft mask): a hidden grey "
                                                             "layer on top (white = 1). Not a transparency: the foreground's "
                                                             "own alpha is its transparency."),
                io.Int.Input("set_index", default=0, min=0, max=MAX_SET,
                             tooltip="Which layered set (0 = the first) becomes the stack. Create Layered Image makes one "
                                     "picture of one stack, and turns an image batch into layers stacked on each other: "
                                     "every set in one stack would bury each set under the next set's background. For "
                                     "several sets, use one node per set."),
                light_and_shadow_input("as the layers' blend_mode, worked out in linear light as Create Layered Image "
                                       "blends them"),
                foregrounds_input("Each object of the chosen set is its own layer, 'foreground 1' (bottom) to "
                                  "'foreground K', and so is each mask ('mask 1' to 'mask K': the mask follows the "
                                  "foreground's images). set_index counts sets, not images."),
            ],
            outputs=[
                layers_io().Output("layers", display_name="LAYERS",
                                   tooltip="The set's layer stack, for Create Layered Image or Add Layer (which adds its "
                                           "layer on top)."),
                io.Image.Output("layer_images", display_name="layer images",
                                tooltip="The same layers as one RGBA batch, bottom first (RGB layers opaque), shown on the "
                                        "node: ComfyUI's Layer Editor opens on a node showing several images."),
            ],
            **intermediate_output(),
        )

    @classmethod
    def execute(cls, foreground, background, set_index: int, composite=None, mask=None,
                light_and_shadow: bool = False, foregrounds: int = 1) -> io.NodeOutput:
        background, composite, mask = layered_set(LAYERS_NODE, foreground, background, composite, mask, light_and_shadow,
                                                  foregrounds)
        sets = foreground.shape[0] // foregrounds
        if not 0 <= set_index < sets:
            raise node_error(LAYERS_NODE, "set_index", f"is {set_index}, the foreground has {sets} set(s) (0 to {sets - 1})",
                             f"Choose a set from 0 to {sets - 1}.")
        layers = native_layers.set_layers(foreground, background, set_index, composite, mask, light_and_shadow, foregrounds)
        images = native_layers.layers_batch(layers)
        log.debug("%s: set %d of %d as %d layers", LAYERS_NODE, set_index, sets, len(layers))
        return io.NodeOutput(native_layers.layers_document(layers), images, ui={"images": temp_pngs(images)})
