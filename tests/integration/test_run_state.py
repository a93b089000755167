"""Who owns a LayerFusion generation's state (issue 20): the run itself, and what it leaves behind.

- Each finished run writes one `MaskRecord` into the slot of the model that ran (and of the models it
  was cloned from); two clones of one LayerFusion Apply output sampled one after the other keep
  their own records, and LayerFusion Masks shows each clone its own run.
- The pack's patch callables take the arguments a newer ComfyUI may add: every attention patch and
  wrapper the pack registers accepts extra keyword arguments, and an attention patch called with
  one gives the same samples, bit for bit.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from layerfusion.layerfusion_core.patching.layerfusion import fusion_patch
from layerfusion.nodes.fusion import LayerFusionApply, LayerFusionConditioning, LayerFusionMasks

STEPS = 3


def apply(model, **options):
    args = dict(d=10.0, prior_at=0.8, prior_mode="prior_pass", blend_start=0.0, blend_end=1.0, bg_mode="bg_from_bl",
                blend_blend=True, blend_fg=True, blend_bg=True)
    return LayerFusionApply.execute(model, **{**args, **options}).result[0]


@pytest.fixture(scope="module")
def conds(tiny):
    return LayerFusionConditioning.execute(tiny.clip, "a glass bottle", "a wooden table", "", "blurry").result


def sample(model, conds, seed):
    import comfy.sample

    noise = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(model, noise, STEPS, 5.0, "euler", "normal", conds[0], conds[1], torch.zeros_like(noise),
                               seed=0, disable_pbar=True)


def record(model):
    return fusion_patch(model).records.record


def _copy_dicts_and_lists(value):
    """Dicts and lists copied, every other value shared (as comfy.utils.deepcopy_list_dict does)."""
    if isinstance(value, dict):
        return {k: _copy_dicts_and_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_dicts_and_lists(v) for v in value]
    return value


def clone_as_current_comfyui(patcher):
    """ModelPatcher.clone as current ComfyUI does it (comfy/model_patcher.py, clone():
    ``n.model_options = comfy.utils.deepcopy_list_dict(self.model_options)``, then the ON_CLONE
    callbacks): the options' dicts and lists are copied, their other values (the pack's objects)
    shared with the original, where 0.3.75 deep-copies them."""
    from comfy.patcher_extension import CallbacksMP

    clone = patcher.clone()
    clone.model_options = _copy_dicts_and_lists(patcher.model_options)
    for callback in patcher.get_all_callbacks(CallbacksMP.ON_CLONE):
        callback(patcher, clone)
    return clone


CLONES = {"ComfyUI 0.3.75's clone": lambda model: model.clone(), "current ComfyUI's clone": clone_as_current_comfyui}


@pytest.mark.parametrize("clone", [pytest.param(c, id=k, marks=[pytest.mark.slow] if k.startswith("current") else [])
                                   for k, c in CLONES.items()])  # the emulated current clone in the slow tier
def test_two_clones_sampled_one_after_the_other_keep_their_own_mask_records(tiny, conds, clone):
    applied = apply(tiny.model)
    first, second = clone(applied), clone(applied)  # e.g. two branches of a graph after one Apply
    out_first = sample(first, conds, seed=1)
    record_first = record(first)
    out_second = sample(second, conds, seed=2)  # other noise: another structure prior
    assert record(first) is record_first and record(second) is not record_first  # the second run left the first's alone
    assert not torch.equal(record(first).structure, record(second).structure)
    # each record is its own run's: a fresh model sampled with the same noise records the same maps
    alone = apply(tiny.model)
    sample(alone, conds, seed=1)
    assert torch.equal(record(alone).structure, record(first).structure)
    assert record(alone).soft.keys() == record(first).soft.keys()
    assert all(torch.equal(record(alone).soft[key], soft) for key, soft in record(first).soft.items())
    # LayerFusion Masks shows each clone its own run; the Apply output shows the last run made from it
    shown_first = LayerFusionMasks.execute(first, {"samples": out_first}, "structure", -1).result[0]
    shown_second = LayerFusionMasks.execute(second, {"samples": out_second}, "structure", -1).result[0]
    assert not torch.equal(shown_first, shown_second)
    assert torch.equal(LayerFusionMasks.execute(applied, {"samples": out_second}, "structure", -1).result[0], shown_second)
    # a clone that has not run shows nothing yet, with the node's own error
    with pytest.raises(ValueError, match="LayerFusion Masks: input 'block': nothing recorded yet"):
        LayerFusionMasks.execute(clone(first), {"samples": out_first}, "structure", -1)


def _registered_callables(model) -> dict[str, object]:
    """Every callable the pack registered on ``model``: attention patches and wrappers, by name."""
    found = {}
    for kind, patches in model.model_options["transformer_options"].get("patches", {}).items():
        for patch in patches:
            if type(patch).__module__.startswith("layerfusion"):
                found[f"{kind}: {type(patch).__name__}"] = patch
    for kind, by_key in model.wrappers.items():
        for key, wrappers in by_key.items():
            if key.startswith("layerfusion"):
                for wrapper in wrappers:
                    found[f"{kind}: {key}"] = wrapper
    return found


def test_every_registered_patch_and_wrapper_takes_extra_keyword_arguments(tiny):
    model = apply(tiny.model)
    found = _registered_callables(model)
    assert {"attn1_patch: PriorProbe", "attn2_patch: PriorProbe", "attn1_output_patch: BlendOutput",
            "attn2_output_patch: BlendOutput", "diffusion_model: layerfusion.rows", "sampler_sample: layerfusion.fusion"} <= set(found)
    for name, fn in found.items():
        kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD in kinds, f"{name} cannot take a new keyword argument from ComfyUI"


def test_attention_patches_called_with_a_new_argument_give_the_same_samples(tiny, conds):
    """Emulates a ComfyUI that passes one more keyword argument to every attention patch."""
    reference = sample(apply(tiny.model), conds, seed=3)
    model = apply(tiny.model)
    def with_new_argument(patch):
        return lambda *args: patch(*args, newer_host_argument=True)

    patches = model.model_options["transformer_options"]["patches"]
    for kind in ("attn1_patch", "attn2_patch", "attn1_output_patch", "attn2_output_patch"):
        patches[kind] = [with_new_argument(patch) for patch in patches[kind]]
    assert torch.equal(sample(model, conds, seed=3), reference)
    assert record(model).blend_calls == STEPS
