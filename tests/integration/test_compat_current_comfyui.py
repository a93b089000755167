"""Compatibility tier: what current ComfyUI (0.38, dynamic VRAM on by default on NVIDIA) does
differently from the pinned 0.3.75, emulated on the pinned host. Each emulation is named after the
current source it stands for.

- `LazyLinearOps` (comfy/ops.py under dynamic VRAM, `ModelPatcherDynamic.load`): a comfy.ops Linear
  holds no weight until its weights are loaded, so a freshly built module's ``state_dict()`` lacks
  them.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from layerfusion.layerfusion_core import vae_models
from layerfusion.layerfusion_core.safetensors_io import WeightFileError
from layerfusion.layerfusion_core.transparent_vae import TransparentDecoder
from layerfusion_testnodes import standins


def lazy_linear_ops():
    """comfy.ops.disable_weight_init whose Linear has weight and bias None until load_state_dict."""
    import comfy.ops

    class LazyLinearOps(comfy.ops.disable_weight_init):
        class Linear(comfy.ops.disable_weight_init.Linear):
            def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
                torch.nn.Module.__init__(self)
                self.in_features, self.out_features = in_features, out_features
                self.weight, self.bias = None, None
                self._lazy_bias = bias

            def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
                for name in ("weight", "bias") if self._lazy_bias else ("weight",):
                    key = prefix + name
                    if key in state_dict:
                        setattr(self, name, torch.nn.Parameter(state_dict[key].clone(), requires_grad=False))
                    else:
                        missing_keys.append(key)

    return LazyLinearOps


@pytest.fixture
def lazy_ops(monkeypatch):
    import comfy.ops

    ops = lazy_linear_ops()
    with torch.device("meta"):
        probe = TransparentDecoder(ops=ops)
    assert not any(k.endswith("to_q.weight") for k in probe.state_dict()), "the emulation must hide the Linear weights"
    monkeypatch.setattr(comfy.ops, "disable_weight_init", ops)
    return ops


def test_decoder_layout_check_passes_with_lazily_built_linear_layers(tmp_path, lazy_ops, tiny):
    state = standins.exact_standin(standins.DECODER_FILE, seed=3)
    path = tmp_path / standins.DECODER_FILE
    save_file(state, str(path))
    module = vae_models._build(TransparentDecoder, str(path))
    loaded = dict(module.state_dict())
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k].to(loaded[k].dtype)) for k in state)
    assert any(isinstance(m, lazy_ops.Linear) for m in module.modules())


def test_decoder_layout_check_still_refuses_a_wrong_file_with_lazy_layers(tmp_path, lazy_ops, tiny):
    state = standins.exact_standin(standins.DECODER_FILE, seed=3)
    name = next(k for k in state if k.endswith("to_q.weight"))
    state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1], dtype=state[name].dtype)
    path = tmp_path / standins.DECODER_FILE
    save_file(state, str(path))
    with pytest.raises(WeightFileError, match="wrong shape"):
        vae_models._build(TransparentDecoder, str(path))
