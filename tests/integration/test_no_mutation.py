"""No node changes its input MODEL (issue 9): for every node of the pack that takes a MODEL, in
every branch and mode, the input ModelPatcher is the same after the node ran and after sampling
with the node's output, on the real ComfyUI with the tiny SDXL-architecture model.

What "the same" means, compared exactly (tensors by their bytes):

- the patcher: ``object_patches``, ``patches`` (every weight patch and its tensors), ``model_options`` (the
  nested ``transformer_options`` dicts, patch lists, replace slots, with each callable by
  identity; for a branch LoRA: its key, branch, factors and scales), wrappers, callbacks,
  attachments, injections, hook patches, additional models;
- the module tree and the state dict of the model the input runs, once the input is the loaded
  model again, and the latents it samples (bit for bit).

ComfyUI shares the ``torch.nn.Module`` of a checkpoint between all clones of its ModelPatcher and
leaves the last sampled clone's object and weight patches applied in it until another clone is
loaded (its ``backup`` and ``object_patches_backup`` are shared between clones by design, so they
are not compared). So the module-level checks load the input first, as every sampler does, and
a last check unloads everything and expects the checkpoint's own modules and weights with no
forward hook left. The slot LayerFusion Masks reads (`RecordSlot`) also receives the records of
runs of the models cloned from it, by design, and changes no result; it is compared by identity.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from layerfusion.layerfusion_core.patching.branch_lora import BranchLoRA
from layerfusion.layerfusion_core.patching.calls import enable_layered_batch
from layerfusion.nodes.fusion import LayerFusionApply, LayerFusionConditioning, LayerFusionMasks
from layerfusion.nodes.layerdiffuse import LayerFusionLayerDiffuseCond
from layerfusion.nodes.lora import LayerFusionLoraApply
from layerfusion_dev.testnodes import standins, tiny_sdxl
from support.sampling import fixed_cond

STEPS = 2
SIZE = 8  # latent side: 64 px
PREFIX = "nomut_"  # file names of this module only, so other modules' folders never shadow them
ATTN = f"{PREFIX}attn.safetensors"
FULL = f"{PREFIX}full_delta.safetensors"
KOHYA = f"{PREFIX}kohya.safetensors"
FG2BLE = f"{PREFIX}fg2ble.safetensors"
FGBLE2BG = f"{PREFIX}fgble2bg.safetensors"


# ---- exact descriptions of a patcher's state --------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TensorBytes:
    """A tensor by its shape, dtype and bytes, compared exactly (a copy of the bytes: comparing
    them is far quicker than hashing every weight of the model at each check); shown by a hash."""

    shape: tuple[int, ...]
    dtype: str
    raw: bytes = dataclasses.field(repr=False)

    def __repr__(self) -> str:
        return f"tensor{self.shape} {self.dtype} {hashlib.blake2b(self.raw, digest_size=16).hexdigest()}"


def _digest(tensor: torch.Tensor) -> TensorBytes:
    data = tensor.detach().cpu().contiguous()
    raw = data.view(torch.uint8) if data.numel() else data
    return TensorBytes(tuple(data.shape), str(data.dtype), raw.numpy().tobytes())


def describe(value: Any, depth: int = 0) -> Any:
    """A comparable, exact description of ``value``: containers by content, tensors by bytes, the
    pack's own objects by their fields, anything else (callables, ComfyUI objects) by identity."""
    if depth > 12:
        return ("deep", type(value).__name__, id(value))
    if isinstance(value, torch.Tensor):
        return _digest(value)
    if value is None or isinstance(value, (bool, int, float, str, bytes, enum.Enum)):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((repr(k), describe(v, depth + 1)) for k, v in value.items()), key=lambda kv: kv[0])))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(describe(v, depth + 1) for v in value))
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted(repr(describe(v, depth + 1)) for v in value)))
    if isinstance(value, BranchLoRA):  # by its fields, not the hooks it has attached (loading attaches them)
        return ("branch_lora", id(value), value.key, value.branch, value.file_name,
                tuple((path, f.scale, _digest(f.up), _digest(f.down)) for path, f in value.layers.items()))
    if isinstance(value, torch.nn.Module):
        return ("module", type(value).__name__, id(value))
    if type(value).__module__.startswith("layerfusion") and not dataclasses.is_dataclass(value) and hasattr(value, "__dict__"):
        return (type(value).__name__, id(value), describe(vars(value), depth + 1))
    return (type(value).__name__, id(value))


PATCHER_FIELDS = ("object_patches", "patches", "patches_uuid", "model_options", "wrappers", "callbacks", "attachments",
                  "additional_models", "injections", "weight_wrapper_patches", "hook_patches", "forced_hooks",
                  "hook_mode", "force_cast_weights", "parent", "model")


def patcher_state(model) -> dict[str, Any]:
    return {name: describe(getattr(model, name)) for name in PATCHER_FIELDS}


def module_state(model) -> dict[str, Any]:
    """The module tree (path, class, identity) and every state-dict tensor of the running model."""
    return {"tree": [(name, type(m).__name__, id(m)) for name, m in model.model.named_modules()],
            "weights": {k: _digest(v) for k, v in model.model.state_dict().items()}}


def hooked_layers(model) -> list[tuple[str, int]]:
    """The layers carrying forward hooks (a loaded branch LoRA's), with their number of hooks."""
    return [(name, len(m._forward_hooks)) for name, m in model.model.diffusion_model.named_modules() if m._forward_hooks]


def differences(before: dict, after: dict) -> list[str]:
    return [key for key in before if before[key] != after[key]]


def load(model) -> None:
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])


# ---- the model, its files and conditionings ---------------------------------------------------
@pytest.fixture(scope="module")
def built():
    return tiny_sdxl.build("depth1", seed=0)


@pytest.fixture(scope="module")
def pristine(built):
    """The checkpoint's own module tree and weights, with nothing loaded."""
    import comfy.model_management

    comfy.model_management.unload_all_models()
    assert hooked_layers(built.model) == []
    return module_state(built.model)


@pytest.fixture(scope="module", autouse=True)
def files(built, tmp_path_factory):
    """This module's weight files in a layer_model and a loras folder of their own (removed after)."""
    import folder_paths

    root = tmp_path_factory.mktemp("no_mutation")
    shapes = standins.unet_shapes(built.model)
    layer_model, loras = root / "layer_model", root / "loras"
    layer_model.mkdir()
    loras.mkdir()
    save_file(standins.attn_lora_standin(shapes, rank=4, seed=3), str(layer_model / ATTN))
    conv_key = "diffusion_model.input_blocks.1.0.in_layers.2.weight"
    delta = torch.randn(shapes[conv_key], generator=torch.Generator().manual_seed(4)) * 0.2
    save_file({f"{conv_key}::diff::0": delta}, str(layer_model / FULL))
    save_file(standins.conditional_standin(shapes, 1, seed=5), str(layer_model / FG2BLE))
    save_file(standins.conditional_standin(shapes, 2, seed=6), str(layer_model / FGBLE2BG))
    save_file(standins.kohya_lora_standin(built.model, seed=7), str(loras / KOHYA))
    added = [("layer_model", str(layer_model)), ("loras", str(loras))]
    for folder, path in added:
        folder_paths.add_model_folder_path(folder, path)
    yield
    for folder, path in added:
        paths = folder_paths.folder_names_and_paths[folder][0]
        if path in paths:
            paths.remove(path)


@pytest.fixture(scope="module")
def fusion_conds(built):
    return LayerFusionConditioning.execute(built.clip, "a glass bottle", "a wooden table", "", "blurry").result


# ---- the nodes, and how their outputs are sampled ---------------------------------------------
def lora(model, name=ATTN, branch="fg", weight=1.0):
    return LayerFusionLoraApply.execute(model, name, branch, weight).result[0]


def fusion(model, **options):
    args = dict(d=10.0, prior_at=0.8, prior_mode="prior_pass", blend_start=0.0, blend_end=1.0, bg_mode="bg_from_bl",
                blend_blend=True, blend_fg=True, blend_bg=True)
    return LayerFusionApply.execute(model, **{**args, **options}).result[0]


def condition(seed: int) -> dict:
    return {"samples": torch.randn(1, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))}


def sample(model, positive, negative, rows: int) -> torch.Tensor:
    import comfy.sample

    noise = torch.randn(rows, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    return comfy.sample.sample(model, noise, STEPS, 5.0, "euler", "normal", positive, negative, torch.zeros_like(noise),
                               seed=1, disable_pbar=True)


@dataclasses.dataclass(frozen=True)
class Case:
    """A node run on an input model: ``make_input(built)`` -> input; ``node(input, ctx)`` -> what
    to sample ``(model, positive, negative)``, or None for a node whose output is not a model."""

    make_input: Callable
    node: Callable
    rows: int = 3
    layerfusion_conds: bool = False


def plain(built):
    return built.model


def layered(built):
    return enable_layered_batch(built.model)


def layered_fg_lora(built):
    return lora(layered(built), branch="fg", weight=0.8)


def fg_lora(built):
    return lora(built.model, branch="fg", weight=0.8)


def plain_conds(_ctx):
    return fixed_cond(2), fixed_cond(3)


def sampled_by(node_output: Callable):
    """A node that returns a MODEL: sample it with the case's conditioning."""
    return lambda model, conds: (node_output(model), *conds)


def layerdiffuse(name, conditions, stop_at=1.0):
    def run(model, conds):
        extra = {"condition_2": conditions[1]} if len(conditions) > 1 else {}
        return tuple(LayerFusionLayerDiffuseCond.execute(model, *conds, conditions[0], name, 1.0, stop_at, **extra).result)
    return run


def masks_after_sampling(model, conds):
    """LayerFusion Masks takes the model that went into the sampler: its input is that model."""
    samples = sample(model, *conds, rows=3)
    LayerFusionMasks.execute(model, {"samples": samples}, "structure", -1)
    LayerFusionMasks.execute(model, {"samples": samples}, "middle 0 0", 0)
    return None


def _lora_case(branch: str) -> Case:
    return Case(layered, sampled_by(lambda m: lora(m, branch=branch)))


CASES = {
    **{f"lora {branch}, layered batch": _lora_case(branch) for branch in ("fg", "bg", "blend", "all")},
    "lora fg, plain model": Case(plain, sampled_by(lambda m: lora(m, branch="fg")), rows=1),
    "lora all at 0.5, plain model": Case(plain, sampled_by(lambda m: lora(m, branch="all", weight=0.5))),
    "lora all full delta (weight patch)": Case(layered, sampled_by(lambda m: lora(m, FULL, branch="all"))),
    "kohya lora bg on a model with a fg lora": Case(layered_fg_lora, sampled_by(lambda m: lora(m, KOHYA, branch="bg"))),
    "lora fg again on a model with a fg lora": Case(layered_fg_lora, sampled_by(lambda m: lora(m, branch="fg", weight=-1.0))),
    "layerfusion prior_pass on a fg-lora model": Case(fg_lora, sampled_by(fusion), layerfusion_conds=True),
    "layerfusion in_run bl_from_bg, plain model": Case(
        plain, sampled_by(lambda m: fusion(m, prior_mode="in_run", prior_at=1.0, bg_mode="bl_from_bg", d=4.0)), layerfusion_conds=True),
    "layerdiffuse fg2ble, plain model": Case(plain, layerdiffuse(FG2BLE, [condition(5)]), rows=1),
    "layerdiffuse fgble2bg stop_at 0.5, fg-lora model": Case(
        fg_lora, layerdiffuse(FGBLE2BG, [condition(5), condition(6)], stop_at=0.5), rows=1),
    "masks, on the fusion model after sampling": Case(
        lambda built: fusion(fg_lora(built)), masks_after_sampling, layerfusion_conds=True),
}


# Cases that run a node of the pack already run by a quick case, in another branch, mode or input:
# the slow tier (make test-all). The quick tier keeps one case of each node and kind of input.
SWEEP = {"lora bg, layered batch", "lora blend, layered batch", "lora all, layered batch", "lora all at 0.5, plain model",
         "lora fg again on a model with a fg lora", "layerfusion in_run bl_from_bg, plain model", "layerdiffuse fg2ble, plain model"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in SWEEP else name for name in CASES])
def test_the_input_model_is_unchanged_after_execute_and_after_sampling(built, pristine, fusion_conds, name):
    import comfy.model_management

    case = CASES[name]
    model = case.make_input(built)
    conds = fusion_conds if case.layerfusion_conds else plain_conds(None)
    reference = sample(model, *conds, rows=case.rows)  # the input, loaded and sampled
    patcher_before, modules_before, conds_before = patcher_state(model), module_state(model), describe(conds)
    own_hooks = hooked_layers(model)

    sampled = case.node(model, conds)
    assert differences(patcher_before, patcher_state(model)) == [], "execute changed the input patcher"
    assert describe(conds) == conds_before, "execute changed the input conditioning"
    assert module_state(model) == modules_before, "execute changed the running module tree or its weights"

    if sampled is not None:
        out = sample(*sampled, rows=case.rows)
        assert not torch.equal(out, reference), "the node's output model must differ from its input (or the test proves nothing)"
    assert differences(patcher_before, patcher_state(model)) == [], "sampling the output changed the input patcher"
    assert describe(conds) == conds_before, "sampling the output changed the input conditioning"

    load(model)  # what every sampler does first: the input is the running model again
    assert hooked_layers(model) == own_hooks
    assert module_state(model) == modules_before, "the input's module tree or weights differ once it is loaded again"
    assert torch.equal(sample(model, *conds, rows=case.rows), reference), "the input samples differently"
    assert differences(patcher_before, patcher_state(model)) == []

    comfy.model_management.unload_all_models()  # nothing applied: the checkpoint's own modules and weights
    assert hooked_layers(model) == []
    assert module_state(model) == pristine


def test_a_branch_lora_is_not_carried_across_runs_that_change_weights_in_place(built):
    """LayerDiffuse Conditional's deltas are a ComfyUI weight hook, which patches and restores the
    shared weights in place (same tensor, no version count): plain and hooked runs of a model with
    a branch LoRA, alternated, each give what they give when run first."""
    run_time = lora(built.model, branch="fg")
    hooked = layerdiffuse(FG2BLE, [condition(5)])(run_time, plain_conds(None))
    expected_hooked = sample(*hooked, rows=1)
    expected_plain = sample(run_time, *plain_conds(None), rows=1)
    assert not torch.equal(expected_plain, expected_hooked)
    for _ in range(2):
        assert torch.equal(sample(*hooked, rows=1), expected_hooked)
        assert torch.equal(sample(run_time, *plain_conds(None), rows=1), expected_plain)


def test_the_checks_see_every_kind_of_change(built):
    """The comparisons above can fail: each kind of change to a patcher or its module is seen."""
    import comfy.patcher_extension
    import comfy.utils

    model = built.model.clone()
    key = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q"
    changes = {
        "object_patches": lambda m: m.add_object_patch(key, torch.nn.Identity()),
        "patches": lambda m: m.add_patches({f"{key}.weight": ("diff", (torch.zeros(1),))}, 1.0),
        "model_options": lambda m: m.model_options["transformer_options"].setdefault("patches", {}).setdefault("attn1_patch", []).append(print),
        "wrappers": lambda m: m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "probe", print),
        "callbacks": lambda m: m.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_PRE_RUN, "probe", print),
    }
    for field, change in changes.items():
        changed = model.clone()
        snapshot = patcher_state(changed)
        change(changed)
        assert set(differences(snapshot, patcher_state(changed))) == {field} | ({"patches_uuid"} if field == "patches" else set())
    nested = model.clone()
    nested.model_options["transformer_options"]["layerfusion_probe"] = {"inner": [1, 2]}
    snapshot = patcher_state(nested)
    nested.model_options["transformer_options"]["layerfusion_probe"]["inner"].append(3)  # deep, in place
    assert differences(snapshot, patcher_state(nested)) == ["model_options"]

    modules = module_state(model)
    original = comfy.utils.set_attr(model.model, key, torch.nn.Identity())
    try:
        assert module_state(model)["tree"] != modules["tree"]
    finally:
        comfy.utils.set_attr(model.model, key, original)
    weight = model.model.state_dict()[f"{key}.weight"]
    saved = weight[0, 0].clone()
    with torch.no_grad():
        weight[0, 0] += 1.0
        try:
            assert module_state(model)["weights"] != modules["weights"]
        finally:
            weight[0, 0] = saved
    assert module_state(model) == modules
