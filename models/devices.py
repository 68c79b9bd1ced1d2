"""The one device and dtype policy: which device "auto" means, and which dtype each kind of network runs in.

The command line, the data preparation, the ComfyUI glue, LLaVA and the SwinIR cleaner all decide here;
callers only say what they know (the device, what the host says its GPU supports). No ComfyUI, and
torch only inside the functions, so the nodes can list DTYPE_CHOICES without loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPE_CHOICES = ("auto", "float16", "bfloat16", "float32")


def pick_device(name: str = "auto") -> torch.device:
    """A device name ("cpu", "cuda:1", ...), or for "auto" the first CUDA GPU when there is one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def auto_dtype(*, fp16: bool, bf16: bool = False) -> torch.dtype:
    """The preference order every "auto" follows: float16 where it runs well, else bfloat16, else float32."""
    import torch

    if fp16:
        return torch.float16
    if bf16:
        return torch.bfloat16
    return torch.float32


def named_dtype(name: str) -> torch.dtype:
    """"float32", "float16" or "bfloat16" -> the torch dtype (a choice the user made, not "auto")."""
    import torch

    return getattr(torch, name)


def pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The diffusion networks' dtype outside ComfyUI: `choice` by name, or for "auto" float16 on CUDA and
    float32 elsewhere (the ComfyUI glue asks ComfyUI what the GPU supports instead)."""
    if choice == "auto":
        return auto_dtype(fp16=device.type == "cuda")
    return named_dtype(choice)


def concrete_dtype(dtype: str, device) -> str:
    """LLaVA's weights' dtype name for captioning on `device`. "auto": float16 where LLaVA's released
    fp16 weights run natively (CUDA, MPS), bfloat16 on other accelerators, float32 on the CPU
    (half-precision matmuls there are slow or missing). Resolve it for the device captions will run
    on: a model loaded on the CPU and moved to the GPU later should not be float32."""
    import torch

    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    kind = torch.device(device).type
    return str(auto_dtype(fp16=kind in ("cuda", "mps"), bf16=kind != "cpu")).removeprefix("torch.")


def bf16_usable(device: "torch.device | str") -> bool:
    """Whether this pack runs the SwinIR cleaner in bf16 on `device`: CUDA GPUs with native bf16 (compute
    capability 8.0+, Ampere and later). Never on the CPU, where bf16 matmuls are emulated on most
    processors and run slower than float32."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index) >= (8, 0)


def default_dtype(device: "torch.device | str") -> torch.dtype:
    """The SwinIR cleaner's compute dtype on `device`: bf16 where usable, float32 otherwise (never fp16:
    it overflows)."""
    return auto_dtype(fp16=False, bf16=bf16_usable(device))
