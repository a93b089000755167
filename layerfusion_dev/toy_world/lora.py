"""The toy world's foreground LoRA while it trains: rank-r factors on every attention projection of the
UNet's transformer blocks (LayerDiffuse's attention-LoRA layout), applied by forward hooks so the base
stays frozen and untouched, and written under LayerDiffuse's key names."""

from __future__ import annotations

import torch

LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")


class LoRA(torch.nn.Module):
    """Rank-r factors on every attention projection of the UNet's transformer blocks, applied by forward
    hooks (``out + up(down(x))``) so the base stays frozen and untouched."""

    def __init__(self, diffusion_model: torch.nn.Module, rank: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.names: list[str] = []
        self.down = torch.nn.ParameterList()
        self.up = torch.nn.ParameterList()
        self._targets = []
        for name, module in sorted(diffusion_model.named_modules(), key=lambda item: item[0]):
            if isinstance(module, torch.nn.Linear) and name.endswith(LORA_TARGETS) and ".transformer_blocks." in name:
                self.names.append(name)
                self.down.append(torch.nn.Parameter(torch.randn(rank, module.in_features, generator=gen) / module.in_features**0.5))
                self.up.append(torch.nn.Parameter(torch.zeros(module.out_features, rank)))
                self._targets.append(module)
        self._handles = []

    def attach(self) -> None:
        for i, module in enumerate(self._targets):
            self._handles.append(module.register_forward_hook(lambda mod, args, out, i=i: out + (args[0] @ self.down[i].T) @ self.up[i].T))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def layerdiffuse_tensors(self) -> dict[str, torch.Tensor]:
        """The factors under LayerDiffuse's key names: ``diffusion_model.<key>.weight::lora::0`` is up, ``::1`` down."""
        out = {}
        for name, down, up in zip(self.names, self.down, self.up):
            out[f"diffusion_model.{name}.weight::lora::0"] = up.detach().half().contiguous()
            out[f"diffusion_model.{name}.weight::lora::1"] = down.detach().half().contiguous()
        return out
