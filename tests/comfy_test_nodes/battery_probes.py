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


def _clear_bounded_library_caches() -> None:
    """transformers (5.x) keeps each image processor's mean/std tensors in an lru_cache(maxsize=10) keyed by the
    processor: the captioner, built anew on every run with keep_loaded off, adds an entry per run until ten.
    Bounded, and not the pack's: emptied before counting so it does not read as a leak."""
    try:
        from transformers.image_processing_backends import TorchvisionBackend
    except ImportError:  # older transformers: no such cache
        return
    TorchvisionBackend._fuse_mean_std_and_rescale_factor.cache_clear()


def _holder(referrer) -> str:
    """A referrer's type; for a tuple or dict, also what holds that (one level up: caches keep tensors in them)."""
    name = type(referrer).__name__
    if name in ("tuple", "dict"):
        above = sorted({type(r).__name__ if not hasattr(r, "__qualname__") else r.__qualname__
                        for r in gc.get_referrers(referrer)} - {"list", "frame"})
        name += "(" + ",".join(above[:3]) + ")"
    return name


def _live_tensors(holders: bool = False) -> tuple[int, list[str]]:
    """Bytes of every distinct storage behind a gc-reachable tensor, and 'dtype shape' of each, with
    '<- holder types' when `holders` (for a failing leak check's message: gc.get_referrers walks every object
    once per tensor, minutes on a server that has run a battery)."""
    import torch

    seen, total, described = set(), 0, []
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
            held_by = sorted({_holder(r) for r in gc.get_referrers(obj)} - {"list", "frame"}) if holders else []
            described.append(f"{obj.dtype} {tuple(obj.shape)}" + (f" <- {','.join(held_by[:4])}" if holders else ""))
    return total, sorted(described)


class TestOnlyMemoryProbe:
    CATEGORY = "DiffBody/test only"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"optional": {"holders": ("BOOLEAN", {"default": False})}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")

    def run(self, holders=False):
        import comfy.model_management as mm

        _clear_bounded_library_caches()
        gc.collect()
        models = sorted(f"{type(m.model.model).__name__ if hasattr(m.model, 'model') else type(m.model).__name__}"
                        f":{m.model_memory()}" for m in mm.current_loaded_models)
        total, described = _live_tensors(holders)
        return {"ui": {"text": [" | ".join(models)], "tensor_bytes": [total], "tensors": described}}


NODE_CLASS_MAPPINGS = {
    "TestOnlyRaiseZeroDivision": TestOnlyRaiseZeroDivision,
    "TestOnlyOutboundConnection": TestOnlyOutboundConnection,
    "TestOnlyMemoryProbe": TestOnlyMemoryProbe,
    "TestOnlyImageVariant": TestOnlyImageVariant,
}
