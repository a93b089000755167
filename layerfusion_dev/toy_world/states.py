"""A training stage's saved state (parameters, AdamW moments, step) as safetensors: no pickle."""

from __future__ import annotations

from pathlib import Path

import torch


def save(path: Path, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, step: int) -> None:
    import safetensors.torch

    tensors = {f"param.{k}": v.detach().contiguous() for k, v in params.items()}
    names = list(params)
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"opt.{names[index]}.{key}"] = value.detach().reshape(-1).contiguous() if value.ndim == 0 else value.contiguous()
    tmp = path.with_suffix(".tmp")
    safetensors.torch.save_file(tensors, str(tmp), metadata={"step": str(step)})
    tmp.replace(path)


def load(path: Path, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> int:
    import safetensors
    import safetensors.torch

    if not path.is_file():
        return 0
    with safetensors.safe_open(str(path), "pt") as handle:
        step = int(handle.metadata()["step"])
    tensors = safetensors.torch.load_file(str(path))
    names = list(params)
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[f"param.{name}"])
    state = optimizer.state_dict()
    for index, name in enumerate(names):
        entry = {key[len(f"opt.{name}."):]: value for key, value in tensors.items() if key.startswith(f"opt.{name}.")}
        if entry:
            entry["step"] = entry["step"].reshape(())
            state["state"][index] = entry
    optimizer.load_state_dict(state)
    return step
