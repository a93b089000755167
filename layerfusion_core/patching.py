"""The one module that touches ComfyUI's patch machinery (ModelPatcher object patches, weight
patches, wrappers, transformer_options). The maths it runs are plain functions elsewhere.

Per-branch LoRA at run time
---------------------------
ComfyUI's weight patches change a weight for the whole batch, and its per-cond LoRA hooks run
each hook group as a separate UNet call (which would break the exchange between streams). So a
branch LoRA is an *object patch* of each target Linear: `BranchLoRALinear` computes
``inner(x)`` and adds ``scale * (x @ down^T) @ up^T`` on the rows of its branch only; the base
weights stay shared by all streams. Chained LoRAs stack (each wraps what was there).

Which rows belong to which branch is decided once per UNet call by a DIFFUSION_MODEL wrapper
(`_publish_rows`), from the batch size, ``cond_or_uncond`` and whether the model runs the
LayerFusion layout (``transformer_options[LAYOUT_OPTION]``, set by `enable_layered_batch`). The
wrapper publishes it through a context variable for the duration of that call only: the patch
modules read it there, so nothing survives the call and no state lives on nodes or in globals.
"""

from __future__ import annotations

import contextvars
import enum
import logging

import torch
import torch.nn.functional as F

import comfy.model_patcher
import comfy.patcher_extension

from .lora_files import LoadedLoRA
from .streams import STREAMS_PER_SET, Stream

log = logging.getLogger(__name__)

LAYOUT_OPTION = "layerfusion_layout"  # transformer_options flag: the batch is [fg, bg, blend] * N
ROWS_WRAPPER_KEY = "layerfusion.rows"


class Branch(str, enum.Enum):
    FG = "fg"
    BG = "bg"
    BLEND = "blend"
    ALL = "all"

    @property
    def stream(self) -> Stream | None:
        return None if self is Branch.ALL else Stream[self.name]


class BatchLayoutError(ValueError):
    pass


class RowSelector:
    """The rows of one UNet call that each branch owns.

    ``rows`` is the batch size of the call and ``chunks`` the number of cond/uncond chunks in it
    (row ``c * (rows // chunks) + r`` is row ``r`` of chunk ``c``). In the LayerFusion layout row
    ``r`` of a chunk belongs to stream ``r % 3``; in a plain batch `fg` and `all` own every row.
    """

    def __init__(self, rows: int, chunks: int, layered: bool, device: torch.device) -> None:
        self.rows, self.chunks, self.layered, self.device = rows, max(chunks, 1), layered, device
        self._cache: dict[Branch, torch.Tensor | None] = {}
        if layered and (rows % self.chunks or (rows // self.chunks) % STREAMS_PER_SET):
            raise BatchLayoutError(
                f"LayerFusion: the model runs the three-stream layout, but this batch has {rows} rows in "
                f"{self.chunks} cond chunk(s), not {STREAMS_PER_SET} rows (fg, bg, blend) per layered set. "
                "Start the latent with LayerFusion Empty Latent and do not change its batch size."
            )

    def rows_for(self, branch: Branch) -> torch.Tensor | None:
        """Row indices ``[K]`` of ``branch``, or None for every row."""
        if branch not in self._cache:
            self._cache[branch] = self._compute(branch)
        return self._cache[branch]

    def _compute(self, branch: Branch) -> torch.Tensor | None:
        if branch is Branch.ALL or (not self.layered and branch is Branch.FG):
            return None
        if not self.layered:
            raise BatchLayoutError(
                f"LayerFusion LoRA Apply: branch '{branch.value}' needs a LayerFusion batch (LayerFusion Apply on "
                "this model, fed by LayerFusion Empty Latent); this model runs a plain batch. Use branch 'fg' or 'all'."
            )
        index = torch.arange(self.rows, device=self.device)
        return index[(index % (self.rows // self.chunks)) % STREAMS_PER_SET == int(branch.stream)]


_CURRENT_ROWS: contextvars.ContextVar[RowSelector | None] = contextvars.ContextVar("layerfusion_rows", default=None)


def _publish_rows(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
    """DIFFUSION_MODEL wrapper: publish this call's row layout to the branch patches."""
    selector = RowSelector(
        rows=x.shape[0],
        chunks=len(transformer_options.get("cond_or_uncond", [0])),
        layered=bool(transformer_options.get(LAYOUT_OPTION)),
        device=x.device,
    )
    token = _CURRENT_ROWS.set(selector)
    try:
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
    finally:
        _CURRENT_ROWS.reset(token)


# Attributes ComfyUI's model management reads and writes on a patched layer: the proxy hands them
# to the layer it wraps, so weight patches (LoraLoader), low-VRAM casting and offloading keep
# working on a layer that also carries a branch LoRA.
_DELEGATED = frozenset(
    {"comfy_cast_weights", "prev_comfy_cast_weights", "weight_function", "bias_function", "comfy_patched_weights"}
)
_SHARED_PARAMS = ("weight", "bias")


class BranchLoRALinear(torch.nn.Module):
    """``inner(x) + scale * (x @ down^T) @ up^T`` on the rows of ``branch`` (x: ``[B, ..., in]``).

    A transparent proxy for the Linear it replaces: it registers that layer's own ``weight`` and
    ``bias`` Parameters (the same objects) under the same path, so ComfyUI finds, loads, offloads
    and weight-patches them as before, and it forwards ComfyUI's per-layer bookkeeping to the
    wrapped layer, whose own forward (and casting) computes the base output. The wrapped layer is
    held outside the module tree, so it is not listed twice. The factors are ``lora_up`` ``[out, r]``
    and ``lora_down`` ``[r, in]``.
    """

    def __init__(self, inner: torch.nn.Module, up: torch.Tensor, down: torch.Tensor, scale: float, branch: Branch) -> None:
        super().__init__()
        object.__setattr__(self, "_inner", inner)
        for name in _SHARED_PARAMS:
            value = getattr(inner, name, None)
            if value is not None:
                self._parameters[name] = value
        self.lora_up = torch.nn.Parameter(up, requires_grad=False)
        self.lora_down = torch.nn.Parameter(down, requires_grad=False)
        self.scale = float(scale)
        self.branch = branch

    @property
    def inner(self) -> torch.nn.Module:
        return self._inner

    def __getattr__(self, name: str):
        if name in _DELEGATED:
            return getattr(self._inner, name)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value) -> None:
        if name in _DELEGATED:
            setattr(self._inner, name, value)
            return
        if name in _SHARED_PARAMS and "_inner" in self.__dict__:
            setattr(self._inner, name, value)
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in _DELEGATED:
            delattr(self._inner, name)
            return
        super().__delattr__(name)

    def _sync_shared(self) -> None:
        """Hand the wrapped layer our Parameters again if a move replaced them (rare in torch)."""
        for name in _SHARED_PARAMS:
            ours = self._parameters.get(name)
            if ours is not None and getattr(self._inner, name, None) is not ours:
                setattr(self._inner, name, ours)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        down = self.lora_down.to(device=x.device, dtype=x.dtype)
        up = self.lora_up.to(device=x.device, dtype=x.dtype)
        return F.linear(F.linear(x, down), up) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._sync_shared()
        out = self._inner(x)
        selector = _CURRENT_ROWS.get()
        if selector is None:  # called outside a wrapped UNet call: a plain batch
            selector = RowSelector(x.shape[0], 1, layered=False, device=x.device)
        rows = selector.rows_for(self.branch)
        if rows is None:
            return out + self.delta(x)
        return out.index_add(0, rows, self.delta(x.index_select(0, rows)))

    def extra_repr(self) -> str:
        return f"branch={self.branch.value}, rank={self.lora_down.shape[0]}, scale={self.scale:g}"


def _ensure_rows_wrapper(model: comfy.model_patcher.ModelPatcher) -> None:
    kind = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    if not model.get_wrappers(kind, ROWS_WRAPPER_KEY):
        model.add_wrapper_with_key(kind, ROWS_WRAPPER_KEY, _publish_rows)


def apply_branch_lora(
    model: comfy.model_patcher.ModelPatcher, lora: LoadedLoRA, branch: Branch, weight: float
) -> comfy.model_patcher.ModelPatcher:
    """A clone of ``model`` with ``lora`` at ``weight`` on ``branch``; ``model`` is not changed.

    Full deltas and adapters that are not plain Linear LoRAs cannot run per row: with branch
    `all` they become ordinary ComfyUI weight patches, otherwise they are refused (before
    anything is applied)."""
    if lora.full_patches and branch is not Branch.ALL:
        raise ValueError(
            f"{lora.file_name}: {len(lora.full_patches)} of its weights are full deltas or non-Linear adapters, "
            f"which cannot run on the '{branch.value}' rows alone; use branch 'all' (the whole batch), or the "
            "attention LoRA (layer_xl_transparent_attn.safetensors) for the fg branch"
        )
    patched = model.clone()
    for path, factors in lora.low_rank.items():
        inner = patched.get_model_object(path)
        patched.add_object_patch(path, BranchLoRALinear(inner, factors.up, factors.down, factors.scale * weight, branch))
    if lora.full_patches:
        applied = patched.add_patches(lora.full_patches, weight)
        if len(applied) != len(lora.full_patches):
            raise ValueError(f"{lora.file_name}: ComfyUI accepted {len(applied)} of {len(lora.full_patches)} weight patches")
    _ensure_rows_wrapper(patched)
    log.info(
        "%s on branch %s at weight %g: %d weights at run time, %d as weight patches%s",
        lora.file_name, branch.value, weight, len(lora.low_rank), len(lora.full_patches),
        f" ({lora.ignored_keys} text-encoder keys ignored)" if lora.ignored_keys else "",
    )
    return patched


def enable_layered_batch(model: comfy.model_patcher.ModelPatcher) -> comfy.model_patcher.ModelPatcher:
    """A clone of ``model`` that treats its batches as the LayerFusion layout ([fg, bg, blend] * N)."""
    patched = model.clone()
    options = dict(patched.model_options.get("transformer_options", {}))
    options[LAYOUT_OPTION] = True
    patched.model_options["transformer_options"] = options
    _ensure_rows_wrapper(patched)
    return patched


def branch_patches(model: comfy.model_patcher.ModelPatcher) -> dict[str, BranchLoRALinear]:
    """The branch LoRA patches a model carries, by module path (outermost of a stack)."""
    return {k: v for k, v in model.object_patches.items() if isinstance(v, BranchLoRALinear)}
