"""Random weights at real size, made one tensor at a time.

A real-size file is described by a *spec*: {key: tensor}, where a meta tensor stands for "random values of
this shape" and a real tensor (a position-id range, a noise schedule) is written as it is. Specs come from
the public networks built on the meta device and renamed by the same conversion code that saves real
checkpoints, so their keys, shapes and order are the real files'.

- `random_tensor`: the values for one key, seeded by the key's name, so a tensor does not depend on which
  other tensors were made first, and the same spec gives the same file on every machine.
- `materialise`: a whole spec in memory (on any device: the GPU suite builds there, without files).
- `write_safetensors`: a spec straight to a .safetensors file, one tensor in memory at a time.
  (`safetensors.torch.save_file` needs every tensor, and a bytes copy of each, at once: 14 GB for SDXL.)

Values: weight matrices and kernels ~ N(0, 1/fan_in) (activations keep their scale through deep stacks),
norm scales 1 + N(0, 0.02^2), biases and other vectors N(0, 0.02^2). Nothing is left at zero: zero-initialised
layers of a real trained file are not zero either.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from typing import Iterator, Mapping

import torch

Spec = Mapping[str, torch.Tensor]

_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def meta_spec(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A spec from a (meta) state dict: floating tensors become meta tensors of `dtype`, others stay as given."""
    spec = {}
    for key, tensor in state_dict.items():
        if tensor.is_floating_point():
            spec[key] = torch.empty(tensor.shape, dtype=dtype, device="meta")
        elif tensor.is_meta:
            raise ValueError(f"{key}: a non-float meta tensor has no values to write")
        else:
            spec[key] = tensor
    return spec


def spec_of(module: torch.nn.Module, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The spec of a module built on the meta device: its state dict under its own keys."""
    return meta_spec(module.state_dict(), dtype)


def random_tensor(key: str, like: torch.Tensor, *, seed: int = 0, device: "torch.device | str" = "cpu") -> torch.Tensor:
    """The values of one spec entry (see the module doc); real entries are returned as they are."""
    if not like.is_meta:
        return like.to(device)
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    generator = torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    values = torch.randn(like.shape, generator=generator, device=device, dtype=torch.float32)
    if like.dim() >= 2:
        values /= math.sqrt(math.prod(like.shape[1:]))
    elif _is_norm_scale(key, like):
        values = values.mul_(0.02).add_(1.0)
    else:
        values *= 0.02
    return values.to(like.dtype)


def _is_norm_scale(key: str, like: torch.Tensor) -> bool:
    """A 1-D `weight` is a norm's scale (linear and conv weights have two or more dimensions)."""
    return like.dim() == 1 and key.rsplit(".", 1)[-1] in ("weight", "gamma", "scale")


def iter_tensors(spec: Spec, *, seed: int = 0, device: "torch.device | str" = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    for key, like in spec.items():
        yield key, random_tensor(key, like, seed=seed, device=device)


def materialise(spec: Spec, *, seed: int = 0, device: "torch.device | str" = "cpu") -> dict[str, torch.Tensor]:
    """The whole spec in memory on `device`."""
    return dict(iter_tensors(spec, seed=seed, device=device))


def write_safetensors(path: str, spec: Spec, *, seed: int = 0, metadata: Mapping[str, str] | None = None) -> str:
    """Write the spec's tensors to `path` in the safetensors format, one at a time; returns `path`.
    Written to a temporary name and renamed, so an interrupted build leaves no half file under the real name."""
    header, offset = {}, 0
    for key, like in spec.items():
        size = like.numel() * like.element_size()
        header[key] = {"dtype": _SAFETENSORS_DTYPES[like.dtype], "shape": list(like.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"
    with open(partial, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for key, tensor in iter_tensors(spec, seed=seed):
            f.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    os.replace(partial, path)
    return path
