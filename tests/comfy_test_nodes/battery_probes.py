"""Test-only nodes for the bad-input battery (tests/test_battery.py).

- `TestOnlyRaiseZeroDivision`: a planted raw internal error (1 / 0 on the image's width), so the battery
  proves its classifier catches one through the real server.
- `TestOnlyOutboundConnection`: opens a TCP connection to a non-loopback address (TEST-NET-3, never
  routed) from inside the server; the network guard (tests/network_guard/sitecustomize.py) must refuse it.
- `TestOnlyImageVariant`: the IMAGE it is given as grey (1 channel), grey + alpha (2), RGBA (4), a batch of
  three or unbatched (H, W, C): what other custom nodes hand the pack's nodes, which must all take them alike.
- `TestOnlyMemoryProbe`: the server's loaded-model list (comfy.model_management.current_loaded_models)
  and the bytes held by live tensors (every torch.Tensor the garbage collector can reach), for the
  battery's leak check. Queued alone, so ComfyUI's default cache has dropped the previous prompt's outputs;
  runs on every prompt (IS_CHANGED is NaN).
"""

from __future__ import annotations

import gc
import socket

PLANTED_ADDRESS = ("203.0.113.7", 80)  # TEST-NET-3 (RFC 5737): documentation only, never routed


class TestOnlyRaiseZeroDivision:
    CATEGORY = "DiffBody/test only"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        tiles = image.shape[2] // 10 ** 9  # 0 for any real width
        return (image * (1 / tiles),)  # ZeroDivisionError: what an unguarded size computation raises


class TestOnlyOutboundConnection:
    CATEGORY = "DiffBody/test only"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"attempt": ("INT", {"default": 0, "min": 0, "max": 1 << 30})}}

    def run(self, attempt):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            try:
                sock.connect(PLANTED_ADDRESS)
                outcome = "connected"
            except OSError as error:
                outcome = f"{type(error).__name__}: {error}"
        return {"ui": {"text": [outcome]}}


IMAGE_VARIANTS = ("grey, 1 channel", "grey + alpha, 2 channels", "RGBA, 4 channels", "batch of 3",
                  "unbatched (H, W, C)")


class TestOnlyImageVariant:
    CATEGORY = "DiffBody/test only"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "variant": (list(IMAGE_VARIANTS),)}}

    def run(self, image, variant):
        import torch

        rgb = image[..., :3]
        grey = rgb.mean(-1, keepdim=True)
        half = torch.full_like(grey, 0.5)
        made = {"grey, 1 channel": grey, "grey + alpha, 2 channels": torch.cat([grey, half], -1),
                "RGBA, 4 channels": torch.cat([rgb, half], -1),
                "batch of 3": torch.cat([rgb, rgb.flip(2), 1 - rgb]), "unbatched (H, W, C)": rgb[0]}
        return (made[variant].contiguous(),)


def _live_tensor_bytes() -> int:
    import torch

    seen, total = set(), 0
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.is_meta:
                continue
            storage = obj.untyped_storage()
        except Exception:  # noqa: BLE001 - objects that pretend to be tensors (lazy proxies) are skipped
            continue
        key = (storage.data_ptr(), storage.device.type)
        if key not in seen and storage.data_ptr():
            seen.add(key)
            total += storage.nbytes()
    return total


class TestOnlyMemoryProbe:
    CATEGORY = "DiffBody/test only"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")

    def run(self):
        import comfy.model_management as mm

        gc.collect()
        models = sorted(f"{type(m.model.model).__name__ if hasattr(m.model, 'model') else type(m.model).__name__}"
                        f":{m.model_memory()}" for m in mm.current_loaded_models)
        return {"ui": {"text": [" | ".join(models)], "tensor_bytes": [_live_tensor_bytes()]}}


NODE_CLASS_MAPPINGS = {
    "TestOnlyRaiseZeroDivision": TestOnlyRaiseZeroDivision,
    "TestOnlyOutboundConnection": TestOnlyOutboundConnection,
    "TestOnlyMemoryProbe": TestOnlyMemoryProbe,
    "TestOnlyImageVariant": TestOnlyImageVariant,
}
