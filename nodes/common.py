"""What every LayerFusion node shares: its menu category and how it words an error."""

from __future__ import annotations

CATEGORY = "LayerFusion"
MAX_RESOLUTION = 16384


def node_error(node: str, input_name: str, problem: str, fix: str) -> ValueError:
    """An error for people: which node, which input, what was wrong, what to do."""
    return ValueError(f"{node}: input '{input_name}': {problem.rstrip('.')}. {fix}")
