"""Compatibility tier: what current ComfyUI (0.38, dynamic VRAM on by default on NVIDIA) does
differently from the pinned 0.3.75, emulated on the pinned host. Each emulation is named after the
current source it stands for.

- `LazyLinearOps` (comfy/ops.py under dynamic VRAM, `ModelPatcherDynamic.load`): a comfy.ops Linear
  holds no weight until its weights are loaded, so a freshly built module's ``state_dict()`` lacks
  them.
- `on_worker_thread` (comfy/samplers.py `_calc_cond_batch_multigpu`: `_handle_batch` runs
  `apply_model` on a `MultiGPUThreadPool` worker): the UNet call happens on another thread, where
  the sampling thread's context variables are empty.

And the no-op guard: each hook point the pack relies on, broken on purpose, gives a loud error.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import concurrent.futures

from layerfusion.layerfusion_core import lora_files, patching, vae_models
from layerfusion.layerfusion_core.safetensors_io import WeightFileError
from layerfusion.layerfusion_core.transparent_vae import TransparentDecoder
from layerfusion.nodes.fusion import LayerFusionApply, LayerFusionConditioning
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


# ---- run state on the thread that runs the UNet call; the no-op guard ----------------------
@pytest.fixture(scope="module")
def fused(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    save_file(standins.attn_lora_standin(standins.unet_shapes(tiny.model), rank=4), str(folder / standins.ATTN_FILE))
    lora = lora_files.load_lora(str(folder / standins.ATTN_FILE), tiny.model.model)
    fg = patching.apply_branch_lora(tiny.model, lora, patching.Branch.FG, 1.0)
    model = LayerFusionApply.execute(fg, d=10.0, prior_at=0.8, prior_mode="prior_pass", blend_start=0.0, blend_end=1.0,
                                     bg_mode="bg_from_bl", blend_blend=True, blend_fg=True, blend_bg=True).result[0]
    conds = LayerFusionConditioning.execute(tiny.clip, "a glass bottle", "a wooden table", "", "blurry").result
    return model, conds


def run(model, conds, steps=3):
    import comfy.sample

    noise = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    return comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", conds[0], conds[1], torch.zeros_like(noise),
                               seed=0, disable_pbar=True)


def on_worker_thread(model):
    """A clone whose every UNet call runs on a worker thread (ComfyUI's model_function_wrapper)."""
    clone = model.clone()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def wrapper(apply_model, args):
        return pool.submit(lambda: apply_model(args["input"], args["timestep"], **args["c"])).result()

    clone.set_model_unet_function_wrapper(wrapper)
    return clone, pool


def test_blending_and_the_prior_run_when_the_unet_call_is_on_another_thread(fused):
    import threading

    model, conds = fused
    same_thread = run(model, conds)
    threaded, pool = on_worker_thread(model)
    seen = []
    unet = threaded.model.diffusion_model
    hook = unet.input_blocks[0][0].register_forward_pre_hook(lambda m, a: seen.append(threading.get_ident()))
    try:
        other_thread = run(threaded, conds)
    finally:
        hook.remove()
        pool.shutdown()
    assert seen and threading.get_ident() not in seen  # the emulation really moved the UNet calls
    rec = patching.fusion_patch(threaded).recorder
    assert rec.extractions == 1 and len(rec.blended) == 2 * len(patching.transformer_keys(threaded))
    assert torch.equal(other_thread, same_thread)


def test_the_guard_fires_when_an_attention_output_patch_does_not_run(fused):
    model, conds = fused
    broken = model.clone()
    broken.model_options["transformer_options"]["patches"].pop("attn2_output_patch")
    with pytest.raises(patching.HookPointError, match=r"blend did not run in \d+ of \d+ attention layers .*attn2"):
        run(broken, conds)


def test_the_guard_fires_when_the_unet_wrapper_does_not_run(fused):
    model, conds = fused
    broken = model.clone()
    broken.remove_wrappers_with_key("diffusion_model", patching.ROWS_WRAPPER_KEY)
    with pytest.raises(patching.HookPointError, match="DIFFUSION_MODEL wrapper"):
        run(broken, conds)


def test_the_guard_fires_when_the_prior_probe_does_not_run(fused):
    model, conds = fused
    broken = model.clone()
    broken.model_options["transformer_options"]["patches"].pop("attn1_patch")
    with pytest.raises(patching.HookPointError, match="structure prior"):
        run(broken, conds)


def test_multi_gpu_clones_are_refused_by_name(fused):
    model, conds = fused
    spread = model.clone()
    spread.model_options["multigpu_clones"] = {torch.device("cpu"): spread}
    with pytest.raises(ValueError, match="LayerFusion Apply: this model is spread over several GPUs"):
        run(spread, conds)
