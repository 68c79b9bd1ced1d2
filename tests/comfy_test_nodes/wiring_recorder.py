"""Records what reaches the networks' inputs, for the wiring tests (tests/test_wiring.py in-process,
tests/test_server_wiring.py inside the ComfyUI server through wiring_probe.py).

Pure PyTorch, no ComfyUI: a forward pre-hook (with keyword arguments) on a module stores a CPU copy of one
named argument of its forward each time it runs; `watch_text` wraps an object's `encode(prompts)` and stores
the prompts. Records are {wire name: [tensor or list of prompts, ...]} in call order.
"""

from __future__ import annotations

import inspect

import torch


class WiringRecorder:
    def __init__(self):
        self.records: dict[str, list] = {}
        self._handles: list = []
        self._restores: list = []

    def watch(self, module: torch.nn.Module, wire: str, argument: str) -> None:
        """Store `argument` of module.forward (bound by name, positional or keyword) under `wire` per call."""
        signature = inspect.signature(module.forward)
        if argument not in signature.parameters:
            raise ValueError(f"{type(module).__name__}.forward has no argument {argument!r}")

        def hook(mod, args, kwargs):
            value = signature.bind_partial(*args, **kwargs).arguments.get(argument)
            if not isinstance(value, torch.Tensor):
                raise AssertionError(f"wiring recorder: {wire}: {argument!r} is not a tensor")
            self.records.setdefault(wire, []).append(value.detach().float().cpu().clone())

        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def watch_output(self, module: torch.nn.Module, wire: str, pick) -> None:
        """Store pick(output) of module under `wire` per call (used only to relate one network's input to
        another's output, e.g. the resampler's input to the CLIP encoder's penultimate states)."""
        def hook(mod, args, kwargs, output):
            self.records.setdefault(wire, []).append(pick(output).detach().float().cpu().clone())

        self._handles.append(module.register_forward_hook(hook, with_kwargs=True))

    def watch_text(self, owner, wire: str, method: str = "encode") -> None:
        """Store the prompts (first argument, a str or list of str) of owner.<method> under `wire`."""
        original = getattr(owner, method)

        def recording(prompts, *args, **kwargs):
            self.records.setdefault(wire, []).append([prompts] if isinstance(prompts, str) else list(prompts))
            return original(prompts, *args, **kwargs)

        setattr(owner, method, recording)
        self._restores.append((owner, method, original))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for owner, method, original in reversed(self._restores):
            if owner.__dict__.get(method) is not None:
                delattr(owner, method) if inspect.ismethod(original) else setattr(owner, method, original)
        self._handles, self._restores = [], []


def matches(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> bool:
    """Same shape and every element within atol."""
    return tuple(actual.shape) == tuple(expected.shape) and bool((actual - expected).abs().max() <= atol)


def describe(actual: torch.Tensor, expected: torch.Tensor) -> str:
    if tuple(actual.shape) != tuple(expected.shape):
        return f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    return f"max |difference| {float((actual - expected).abs().max()):.4g}"
