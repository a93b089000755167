"""Compatibility tier: what current ComfyUI (0.38, dynamic VRAM on by default on NVIDIA) does
differently from the pinned 0.3.75, emulated on the pinned host. Each emulation is named after the
current source it stands for.

- `LazyLinearOps` (comfy/ops.py under dynamic VRAM, `ModelPatcherDynamic.load`): a comfy.ops Linear
  holds no weight until its weights are loaded, so a freshly built module's ``state_dict()`` lacks
  them.
- `on_worker_thread` (comfy/samplers.py `_calc_cond_batch_multigpu`: `_handle_batch` runs
  `apply_model` on a `MultiGPUThreadPool` worker): the UNet call happens on another thread, where
  the sampling thread's context variables are empty.
- `AttributeSettingLoader` with `DynamicCastOps` (comfy/model_patcher.py `ModelPatcherDynamic.load`
  and comfy/ops.py's cast under dynamic VRAM): weights are not patched in place; the loader walks
  ``named_modules()`` and hangs its per-layer state (``comfy_cast_weights``, ``seed_key``,
  ``_pin_state``, ``_v``, ``weight_lowvram_function``) on the module found at each weight's path,
  and that layer applies its weight patch from its own ``weight_lowvram_function`` as it casts.
  A proxy module at that path would take the state and leave the real layer without its patch.
- `LowVramLoader` (comfy/model_management.py `load_models_gpu` on a card too small for the model):
  ModelPatcher.load with almost no memory, so every layer casts and applies its weight patches on
  the fly (``LowVramPatch`` in ``weight_function``).

And the no-op guard: each hook point the pack relies on, broken on purpose, gives a loud error.
"""

from __future__ import annotations

import concurrent.futures

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from layerfusion.layerfusion_core.layout.rows import Branch
from layerfusion.layerfusion_core.patching.branch_lora import apply_branch_lora, branch_loras
from layerfusion.layerfusion_core.patching.calls import enable_layered_batch
from layerfusion.layerfusion_core.patching.hook_points import HookPointError
from layerfusion.layerfusion_core.patching.layerfusion import fusion_patch
from layerfusion.layerfusion_core.patching.model_info import transformer_keys
from layerfusion.layerfusion_core.patching.options import ROWS_WRAPPER_KEY
from layerfusion.layerfusion_core.transparency import loading
from layerfusion.layerfusion_core.transparency.networks import TransparentDecoder
from layerfusion.layerfusion_core.weights import lora_files
from layerfusion.layerfusion_core.weights.safetensors_io import WeightFileError
from layerfusion.nodes.fusion import LayerFusionApply, LayerFusionConditioning
from layerfusion_dev.testnodes import standins, tiny_sdxl
from support.sampling import changed_rows, sample


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
    state = standins.load_exact_standin(standins.DECODER_FILE, seed=3)
    path = tmp_path / standins.DECODER_FILE
    save_file(state, str(path))
    module = loading._build(TransparentDecoder, str(path))
    loaded = dict(module.state_dict())
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k].to(loaded[k].dtype)) for k in state)
    assert any(isinstance(m, lazy_ops.Linear) for m in module.modules())


def test_decoder_layout_check_still_refuses_a_wrong_file_with_lazy_layers(tmp_path, lazy_ops, tiny):
    state = standins.load_exact_standin(standins.DECODER_FILE, seed=3)
    name = next(k for k in state if k.endswith("to_q.weight"))
    state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1], dtype=state[name].dtype)
    path = tmp_path / standins.DECODER_FILE
    save_file(state, str(path))
    with pytest.raises(WeightFileError, match="wrong shape"):
        loading._build(TransparentDecoder, str(path))


# ---- run state on the thread that runs the UNet call; the no-op guard ----------------------
@pytest.fixture(scope="module")
def fused(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    save_file(standins.attn_lora_standin(standins.unet_shapes(tiny.model), rank=4), str(folder / standins.ATTN_FILE))
    lora = lora_files.load_lora(str(folder / standins.ATTN_FILE), tiny.model.model)
    fg = apply_branch_lora(tiny.model, lora, Branch.FG, 1.0)
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
    rec = fusion_patch(threaded).records.record
    assert rec.extractions == 1 and len(rec.blended) == 2 * len(transformer_keys(threaded))
    assert torch.equal(other_thread, same_thread)


def test_the_guard_fires_when_an_attention_output_patch_does_not_run(fused):
    model, conds = fused
    broken = model.clone()
    broken.model_options["transformer_options"]["patches"].pop("attn2_output_patch")
    with pytest.raises(HookPointError, match=r"blend did not run in \d+ of \d+ attention layers .*attn2"):
        run(broken, conds)


def test_the_guard_fires_when_the_unet_wrapper_does_not_run(fused):
    model, conds = fused
    broken = model.clone()
    broken.remove_wrappers_with_key("diffusion_model", ROWS_WRAPPER_KEY)
    with pytest.raises(HookPointError, match="DIFFUSION_MODEL wrapper"):
        run(broken, conds)


def test_the_guard_fires_when_the_prior_probe_does_not_run(fused):
    model, conds = fused
    broken = model.clone()
    broken.model_options["transformer_options"]["patches"].pop("attn1_patch")
    with pytest.raises(HookPointError, match="structure prior"):
        run(broken, conds)


def test_multi_gpu_clones_are_refused_by_name(fused):
    model, conds = fused
    spread = model.clone()
    spread.model_options["multigpu_clones"] = {torch.device("cpu"): spread}
    with pytest.raises(ValueError, match="LayerFusion Apply: this model is spread over several GPUs"):
        run(spread, conds)


# ---- branch LoRA: the model's own layers stay in place, whatever the loader does to them ---------
def dynamic_cast_ops():
    """comfy.ops under dynamic VRAM: a Linear applies the weight patch the loader set on it
    (``weight_lowvram_function``) as it casts its weight."""
    import comfy.ops

    class DynamicCastOps(comfy.ops.disable_weight_init):
        class Linear(comfy.ops.disable_weight_init.Linear):
            weight_lowvram_function = None

            def forward_comfy_cast_weights(self, input):
                weight, bias, stream = comfy.ops.cast_bias_weight(self, input, offloadable=True)
                if self.weight_lowvram_function is not None:
                    weight = self.weight_lowvram_function(weight.clone())
                out = F.linear(input, weight, bias)
                comfy.ops.uncast_bias_weight(self, weight, bias, stream)
                return out

    return DynamicCastOps


def loader_classes():
    import comfy.model_patcher

    class AttributeSettingLoader(comfy.model_patcher.ModelPatcher):
        """ModelPatcherDynamic.load: no weight patched in place; per-layer state set on the module at each path."""

        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
            with self.use_ejected():
                for name, module in self.model.named_modules():
                    if not hasattr(module, "comfy_cast_weights"):
                        continue
                    if not hasattr(module, "prev_comfy_cast_weights"):
                        module.prev_comfy_cast_weights = module.comfy_cast_weights
                    module.comfy_cast_weights = True
                    module.seed_key, module._pin_state, module._v = name, {}, ("vbar", 0, 0)
                    key = f"{name}.weight"
                    patch = comfy.model_patcher.LowVramPatch(key, self.patches) if key in self.patches else None
                    module.weight_lowvram_function = patch
                self.model.model_lowvram = True
                self.model.device = device_to
                self.model.current_weight_patches_uuid = self.patches_uuid

    class LowVramLoader(comfy.model_patcher.ModelPatcher):
        """ModelPatcher.load as load_models_gpu calls it when the model does not fit."""

        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
            return super().load(device_to, lowvram_model_memory=1, force_patch_weights=force_patch_weights, full_load=False)

    return {"full load": (None, None), "low VRAM": (LowVramLoader, None),
            "dynamic VRAM": (AttributeSettingLoader, dynamic_cast_ops())}


def _one_prefix_per_weight(unet, kohya_tensors: dict) -> dict:
    """The LoRA with one kohya prefix per weight (the stand-in names some weights under both their
    SGM and their diffusers name, of which ComfyUI loads one)."""
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(unet.model, {})
    first: dict[str, str] = {}
    for name in sorted(kohya_tensors):
        prefix = name.rsplit(".lora_up.weight", 1)[0] if name.endswith(".lora_up.weight") else None
        if prefix is not None:
            first.setdefault(key_map[prefix], prefix)
    kept = set(first.values())
    return {k: v for k, v in kohya_tensors.items() if k.split(".")[0] in kept}


def _merged_by_hand(lora_tensors: dict, kohya_tensors: dict, fg_weight: float, ordinary_weight: float):
    """Two independent tiny UNets: the ordinary LoRA merged into the weights, and that plus the attention LoRA."""
    import comfy.lora

    models = []
    for with_fg in (False, True):
        merged = tiny_sdxl.build_unet("depth1", seed=0)
        key_map = comfy.lora.model_lora_keys_unet(merged.model, {})
        params = dict(merged.model.named_parameters())
        with torch.no_grad():
            for name in kohya_tensors:
                if name.endswith(".lora_up.weight"):
                    prefix = name.removesuffix(".lora_up.weight")
                    up, down = kohya_tensors[name].float(), kohya_tensors[f"{prefix}.lora_down.weight"].float()
                    alpha = float(kohya_tensors[f"{prefix}.alpha"]) / up.shape[1]
                    params[key_map[prefix]].add_(ordinary_weight * alpha * up @ down)
            if with_fg:
                for key in {k.split("::")[0] for k in lora_tensors}:
                    up, down = lora_tensors[f"{key}::lora::0"].float(), lora_tensors[f"{key}::lora::1"].float()
                    params[key].add_(fg_weight * up @ down)
        models.append(enable_layered_batch(merged))
    return models


@pytest.mark.parametrize("loader", [pytest.param("full load", marks=pytest.mark.slow), pytest.param("low VRAM", marks=pytest.mark.slow),
                                    "dynamic VRAM"])  # current ComfyUI's default in the quick tier, the others in the slow one
def test_a_lora_chained_before_lora_apply_still_applies_and_no_proxy_sits_in_the_unet(tmp_path, loader):
    import comfy.model_patcher
    import comfy.sd

    patcher_class, ops = loader_classes()[loader]
    unet = tiny_sdxl.build_unet("depth1", seed=0, operations=ops)
    if patcher_class is not None:
        unet.__class__ = patcher_class  # the loader of the version emulated; clones keep it
    kohya_tensors = _one_prefix_per_weight(unet, standins.kohya_lora_standin(unet, rank=4, seed=4, scale=0.1))
    lora_tensors = standins.attn_lora_standin(standins.unet_shapes(unet), rank=4, seed=5, scale=0.1)
    save_file(lora_tensors, str(tmp_path / standins.ATTN_FILE))
    attn = lora_files.load_lora(str(tmp_path / standins.ATTN_FILE), unet.model)
    layers_before = {path: unet.get_model_object(path) for path in attn.low_rank}

    ordinary, _ = comfy.sd.load_lora_for_models(unet, None, kohya_tensors, 0.9, 0.0)  # what LoraLoader does
    assert len(ordinary.patches) >= len(attn.low_rank)
    model = apply_branch_lora(enable_layered_batch(ordinary), attn, Branch.FG, 0.8)
    out = sample(model, 6)

    assert model.object_patches == {}
    for path, layer in layers_before.items():  # the checkpoint's own layer, hooked, at its own path
        assert model.get_model_object(path) is layer and type(layer).__module__ != "layerfusion.layerfusion_core.patching"
        assert layer._forward_hooks, path
    some_layer = next(iter(layers_before.values()))
    if loader == "low VRAM":
        assert any(isinstance(f, comfy.model_patcher.LowVramPatch) for f in some_layer.weight_function)
    if loader == "dynamic VRAM":
        assert some_layer.weight_lowvram_function is not None and some_layer.seed_key

    ordinary_only, both = (sample(m, 6) for m in _merged_by_hand(lora_tensors, kohya_tensors, 0.8, 0.9))
    plain = sample(enable_layered_batch(tiny_sdxl.build_unet("depth1", seed=0)), 6)
    assert changed_rows(ordinary_only, plain, 1e-2) == list(range(6))  # the ordinary LoRA matters on every row
    assert changed_rows(both, ordinary_only, 1e-2) == list(range(6))  # so does the attention LoRA (merged: every row)
    for rows, reference in (([0, 3], both), ([1, 2, 4, 5], ordinary_only)):
        error = (out[rows] - reference[rows]).abs().max().item() / reference[rows].abs().max().item()
        assert error < 1e-3, (loader, rows, error)


def test_the_guard_fires_when_a_branch_lora_does_not_reach_its_layers(fused):
    model, conds = fused
    broken = model.clone()
    (branch_lora,) = branch_loras(broken)
    broken.remove_injections(branch_lora.key)
    with pytest.raises(HookPointError, match=rf"reached 0 of its {len(branch_lora.layers)} layers"):
        run(broken, conds)
