"""What the tests on the toy world's trained files share: their skip when the files are not in the
checkout, and the toy model with its own LayerFusion Apply settings."""

from __future__ import annotations

import pytest

from layerfusion_dev.testnodes import toy_models

NEEDS_FILES = pytest.mark.skipif(not (toy_models.FILES / toy_models.FG_LORA).is_file(),
                                 reason="the toy world's files are not in the checkout (make toy-world)")


def toy_with_settings():
    """(the loaded toy world, LayerFusion Apply's inputs with the toy model's own settings)."""
    from layerfusion_dev.toy_world import measure

    return measure.Toy(), {**measure.DEFAULTS, **toy_models.APPLY_SETTINGS}
