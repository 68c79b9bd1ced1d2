"""DiffBIR's SwinIR cleaner with random weights, written like the real files.

The network is spandrel's own SwinIR class configured as DiffBIR's (8x PixelUnshuffle input,
"nearest+conv" x8 upsampler, "1conv" residual connection, window 8), so the key names are exactly
the ones spandrel expects; only `conv_first.*` is renamed to DiffBIR's `conv_first.1.*` (DiffBIR wraps
the first conv in `Sequential(PixelUnshuffle(8), Conv2d)`).

Layouts:
- "diffbir_v1": `general_swinir_v1.ckpt`, `torch.save({"state_dict": {"module." + key: tensor}})`.
- "diffbir_v2": `realesrgan_s4_swinir_100k.pth`, a plain `torch.save(state_dict)` with DiffBIR's key
  names and no prefix. Inferred from DiffBIR's `train_stage1.py` (it saves `unwrapped_model.state_dict()`)
  and `load_model_from_url` (which also accepts that); not checked against the published file.
- "safetensors": the same keys as "diffbir_v2" in a .safetensors file (what a user's conversion gives).
"""

from __future__ import annotations

import os

import torch

LAYOUTS = ("diffbir_v1", "diffbir_v2", "safetensors")
OUTPUT_GAIN = 1.6

# DiffBIR's configs/inference/swinir.yaml.
REAL_CONFIG = dict(img_size=64, embed_dim=180, depths=[6] * 8, num_heads=[6] * 8, window_size=8, mlp_ratio=2.0)
# Same structure with a tiny transformer: one residual group of two blocks (the second one shifted, so
# the shifted-window mask is exercised too). The x8 upsampler keeps its fixed 64 channels (spandrel and
# DiffBIR hard-code them) and dominates the cost: about 1 s per 512x512 tile on 2 CPU cores.
TINY_CONFIG = dict(img_size=64, embed_dim=16, depths=[2], num_heads=[2], window_size=8, mlp_ratio=2.0)


def build_diffbir_swinir(config: dict, *, seed: int = 0) -> torch.nn.Module:
    """spandrel's SwinIR in DiffBIR's cleaner layout (x1 overall), random weights from `seed`, eval mode."""
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(seed)
    model = SwinIR(patch_size=1, in_chans=3, upscale=8, img_range=1.0, upsampler="nearest+conv",
                   resi_connection="1conv", start_unshuffle=8, **config)
    _make_output_follow_input(model)
    return model.eval()


def diffbir_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under DiffBIR's key names (`conv_first.1.*`)."""
    renamed = {}
    for key, value in model.state_dict().items():
        if key.startswith("conv_first."):
            key = "conv_first.1." + key[len("conv_first."):]
        renamed[key] = value.detach().clone().contiguous()
    return renamed


def write_swinir(path: str, config: dict, *, layout: str = "diffbir_v1", seed: int = 0) -> str:
    """Write a SwinIR of DiffBIR's kind with `config` to `path` in one of LAYOUTS; returns `path`."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    state_dict = diffbir_state_dict(build_diffbir_swinir(config, seed=seed))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if layout == "diffbir_v1":
        torch.save({"state_dict": {"module." + k: v for k, v in state_dict.items()}}, path)
    elif layout == "diffbir_v2":
        torch.save(state_dict, path)
    else:
        from safetensors.torch import save_file

        save_file(state_dict, path)
    return path


def write_tiny_swinir(path: str, *, layout: str = "diffbir_v1", seed: int = 0) -> str:
    """A tiny DiffBIR SwinIR cleaner (embed_dim 16, one group of 2 blocks) at `path`; returns `path`."""
    return write_swinir(path, TINY_CONFIG, layout=layout, seed=seed)


def write_real_config_swinir(path: str, *, layout: str = "diffbir_v1", seed: int = 0) -> str:
    """DiffBIR's cleaner at its real size (about 16M parameters) with random weights, for benches."""
    return write_swinir(path, REAL_CONFIG, layout=layout, seed=seed)


def _make_output_follow_input(model: torch.nn.Module) -> None:
    """With default initialisation each conv after the transformer shrinks the signal, so a random
    network returns an almost flat grey whatever the input, and a test comparing two outputs would
    pass even when the wrong pixels were compared. A gain of 1.6 on those convs makes the output
    vary with the input (mean change ~0.08 when the input is inverted) while staying inside 0..1."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Conv2d) and name != "conv_first":
                module.weight.mul_(OUTPUT_GAIN)
