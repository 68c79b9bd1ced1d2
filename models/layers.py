"""Small pieces every ControlNet-style network here shares: zero-initialised convs and activation checkpointing."""

from __future__ import annotations

import torch
from torch import nn


def zero_conv(channels: int) -> nn.Conv2d:
    """A 1x1 conv whose weight and bias start at zero: a fresh ControlNet output changes nothing."""
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def enable_checkpointing(model: nn.Module, enabled: bool = True) -> None:
    """Switch diffusers' own activation checkpointing on (or off) in every block that supports it."""
    def checkpoint(module, *args):
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

    for module in model.modules():
        if hasattr(module, "gradient_checkpointing"):
            module._gradient_checkpointing_func = checkpoint
            module.gradient_checkpointing = enabled
