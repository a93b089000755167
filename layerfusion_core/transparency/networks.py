"""LayerDiffuse's transparent VAE parts as torch modules, loadable from the published files by
their own tensor names (no diffusers at run time).

- `TransparentDecoder` ("UNet1024"): RGB ``[B, 3, H, W]`` in [0, 1] (the base VAE's decode) and the
  raw latent ``[B, C, H/8, W/8]`` -> ``[B, 4, H, W]`` in the variant's channel order (unclipped).
  H and W must be multiples of 64 (six downsamplings; `transparency.pad_to_multiple` pads).
- `LatentOffsetEncoder`: RGBA planes in the variant's input order ``[B, 4, H, W]`` -> a latent
  offset ``[B, C, H/8, W/8]``.

``C`` and the orders come from a `TransparentVariant` (SDXL: 4 channels, [alpha, R, G, B];
FLUX: 16 channels, [R, G, B, alpha]), detected from a file's tensor shapes by `detect_variant`.
Layers come from ``ops`` (ComfyUI's `comfy.ops.*` in the pack, plain `torch.nn` in unit tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .variants import SDXL, TransparentVariant

BLOCK_CHANNELS: tuple[int, ...] = (32, 32, 64, 128, 256, 512, 512)
ATTENTION_BLOCKS: frozenset[int] = frozenset({4, 5, 6})  # down blocks with self-attention (up: mirrored)
LAYERS_PER_BLOCK = 2
NORM_GROUPS = 4
NORM_EPS = 1e-5
HEAD_DIM = 8
LATENT_INJECT_BLOCK = 3  # latent features are added before this down block (1/8 resolution)
LATENT_CHANNELS = SDXL.latent_channels  # the SDXL default
SIZE_MULTIPLE = 2 ** (len(BLOCK_CHANNELS) - 1)  # 64


class ResnetBlock(nn.Module):
    def __init__(self, ops, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.norm1 = ops.GroupNorm(NORM_GROUPS, channels_in, eps=NORM_EPS)
        self.conv1 = ops.Conv2d(channels_in, channels_out, 3, padding=1)
        self.norm2 = ops.GroupNorm(NORM_GROUPS, channels_out, eps=NORM_EPS)
        self.conv2 = ops.Conv2d(channels_out, channels_out, 3, padding=1)
        self.conv_shortcut = ops.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.conv_shortcut is None else self.conv_shortcut(x))


class SelfAttention(nn.Module):
    """Single-block spatial self-attention with a residual: heads of size `HEAD_DIM`."""

    def __init__(self, ops, channels: int) -> None:
        super().__init__()
        self.heads = channels // HEAD_DIM
        self.group_norm = ops.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS)
        self.to_q = ops.Linear(channels, channels)
        self.to_k = ops.Linear(channels, channels)
        self.to_v = ops.Linear(channels, channels)
        self.to_out = nn.ModuleList([ops.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        q, k, v = (proj(tokens).view(b, h * w, self.heads, HEAD_DIM).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, ops, channels: int) -> None:
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ops, channels: int) -> None:
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    def __init__(self, ops, channels_in: int, channels_out: int, attention: bool, downsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(ops, channels_in if i == 0 else channels_out, channels_out) for i in range(LAYERS_PER_BLOCK)]
        )
        self.attentions = nn.ModuleList([SelfAttention(ops, channels_out) for _ in range(LAYERS_PER_BLOCK)]) if attention else None
        self.downsamplers = nn.ModuleList([Downsample(ops, channels_out)]) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x)
            if self.attentions is not None:
                x = self.attentions[i](x)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    def __init__(self, ops, channels_prev: int, channels_out: int, skip_channels: list[int], attention: bool, upsample: bool) -> None:
        super().__init__()
        ins = [channels_prev] + [channels_out] * (len(skip_channels) - 1)
        self.resnets = nn.ModuleList([ResnetBlock(ops, i + s, channels_out) for i, s in zip(ins, skip_channels)])
        self.attentions = nn.ModuleList([SelfAttention(ops, channels_out) for _ in skip_channels]) if attention else None
        self.upsamplers = nn.ModuleList([Upsample(ops, channels_out)]) if upsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1))
            if self.attentions is not None:
                x = self.attentions[i](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    def __init__(self, ops, channels: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(ops, channels, channels) for _ in range(2)])
        self.attentions = nn.ModuleList([SelfAttention(ops, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class TransparentDecoder(nn.Module):
    """LayerDiffuse's transparent decoder (see the module docstring for shapes)."""

    def __init__(self, ops=None, variant: TransparentVariant = SDXL) -> None:
        super().__init__()
        ops = ops or nn
        self.variant = variant
        ch = BLOCK_CHANNELS
        n = len(ch)
        self.conv_in = ops.Conv2d(3, ch[0], 3, padding=1)
        self.latent_conv_in = ops.Conv2d(variant.latent_channels, ch[LATENT_INJECT_BLOCK - 1], 1)
        self.down_blocks = nn.ModuleList(
            [DownBlock(ops, ch[max(i - 1, 0)], ch[i], i in ATTENTION_BLOCKS, i < n - 1) for i in range(n)]
        )
        self.mid_block = MidBlock(ops, ch[-1])
        skip_channels = [ch[0]] + [c for i, c in enumerate(ch) for _ in range(LAYERS_PER_BLOCK + (1 if i < n - 1 else 0))]
        ups, prev = [], ch[-1]
        for i, out in enumerate(reversed(ch)):
            block_skips = [skip_channels.pop() for _ in range(LAYERS_PER_BLOCK + 1)]
            ups.append(UpBlock(ops, prev, out, block_skips, (n - 1 - i) in ATTENTION_BLOCKS, i < n - 1))
            prev = out
        self.up_blocks = nn.ModuleList(ups)
        self.conv_norm_out = ops.GroupNorm(NORM_GROUPS, ch[0], eps=NORM_EPS)
        self.conv_out = ops.Conv2d(ch[0], 4, 3, padding=1)

    def forward(self, pixels: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(pixels)
        skips = [x]
        for i, block in enumerate(self.down_blocks):
            if i == LATENT_INJECT_BLOCK:
                x = x + self.latent_conv_in(latent)
            x, block_skips = block(x)
            skips += block_skips
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x, skips)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


ENCODER_CHANNELS: tuple[tuple[int, int, int], ...] = (  # (in, out, stride) of each 3x3 conv; the last
    (4, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 4, 1),
)  # conv's out is the variant's latent channels (SDXL: 4, as here)


class LatentOffsetEncoder(nn.Module):
    """LayerDiffuse's latent-offset encoder: convs with SiLU between (keys ``blocks.{0,2,...,16}``)."""

    def __init__(self, ops=None, variant: TransparentVariant = SDXL) -> None:
        super().__init__()
        ops = ops or nn
        self.variant = variant
        layers: list[nn.Module] = []
        for i, (c_in, c_out, stride) in enumerate(ENCODER_CHANNELS):
            if i == len(ENCODER_CHANNELS) - 1:
                c_out = variant.latent_channels
            if i:
                layers.append(nn.SiLU())
            layers.append(ops.Conv2d(c_in, c_out, 3, stride=stride, padding=1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, rgba: torch.Tensor) -> torch.Tensor:
        return self.blocks(rgba)
