"""Every node's V3 schema passes ComfyUI's own validation (as it does when the pack loads)."""

from __future__ import annotations

import pytest

from layerfusion.nodes import NODES


@pytest.mark.parametrize("node", NODES, ids=lambda n: n.__name__)
def test_schema_is_valid_and_documented(node):
    schema = node.GET_SCHEMA()
    assert schema.node_id == node.__name__ and schema.node_id.startswith("LayerFusion")
    assert schema.description and schema.display_name.startswith("LayerFusion ")
    for item in schema.inputs:
        assert item.tooltip, f"{schema.node_id}.{item.id} has no tooltip"


PREVIEWING = {"LayerFusionTransparentDecode", "LayerFusionMasks", "LayerFusionLayers"}  # nodes whose UI output is a preview


def test_previewing_nodes_ask_for_their_previews_again_where_the_host_can(monkeypatch):
    """ComfyUI 0.19 and later resend a cached node's UI output when its schema sets
    ``has_intermediate_output`` (comfy_api/latest/_io.py Schema); the pinned host has no such field,
    so nothing is set there. Emulated: the host's Schema with that field added."""
    import dataclasses

    from comfy_api.latest import io

    host_has_it = "has_intermediate_output" in {f.name for f in dataclasses.fields(io.Schema)}
    for node in NODES:
        schema = node.define_schema()
        assert getattr(schema, "has_intermediate_output", False) is (host_has_it and schema.node_id in PREVIEWING)

    current = dataclasses.make_dataclass("Schema", [("has_intermediate_output", bool, False)], bases=(io.Schema,))
    monkeypatch.setattr(io, "Schema", current)
    flagged = {node.__name__ for node in NODES if node.define_schema().has_intermediate_output}
    assert flagged == PREVIEWING
