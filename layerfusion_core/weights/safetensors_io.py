"""Reading weight files: safetensors only (no pickle is ever loaded), checked whole and finite before use."""

from __future__ import annotations

import json
import os
import struct

import torch

from .known_files import SAFE_SUFFIXES


class WeightFileError(ValueError):
    """A weight file that cannot be used, and why (the message names the file)."""


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, after checking it is one and is whole."""
    name = os.path.basename(path)
    if not path.lower().endswith(SAFE_SUFFIXES):
        raise WeightFileError(f"{name}: only .safetensors files are read (no pickle is ever loaded); convert it to safetensors")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightFileError(f"{name}: {size} bytes is too short for a safetensors file; download it again")
        header_len = struct.unpack("<Q", head)[0]
        if header_len <= 0 or 8 + header_len > size:
            raise WeightFileError(f"{name}: not a safetensors file, or its header is cut off; download it again")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise WeightFileError(f"{name}: not a safetensors file (its header is not JSON: {err})") from None
    if not isinstance(header, dict):
        raise WeightFileError(f"{name}: not a safetensors file (unexpected header)")
    data_end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + data_end > size:
        missing = 8 + header_len + data_end - size
        raise WeightFileError(f"{name}: the file is truncated ({missing} bytes missing); download it again")
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except Exception as err:  # safetensors raises its own error types
        raise WeightFileError(f"{name}: could not be read as safetensors ({err}); download it again") from None
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise WeightFileError(f"{name}: tensor {key} holds NaN or infinite values (a damaged file); download it again")
    return tensors
