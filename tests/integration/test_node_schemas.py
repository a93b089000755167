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
