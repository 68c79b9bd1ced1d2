"""The colour adapter inside ComfyUI's own sampler: an attn2 patch on the SDXL MODEL (the multi-prior
ControlNet is nodes/multiprior_native.py).

It imports ComfyUI at module level; the node definitions (nodes/stage2.py) import it only when a node runs.
"""

from __future__ import annotations

import copy

import torch
from comfy.ldm.modules import attention


class AdapterRun:
    """What every layer of one colour-adapter patch shares: the adapter, its image tokens (cond: I_res; uncond:
    a zeroed image, as IP-Adapter was trained), the per-layer keys and values of those tokens (computed once
    per image, device and dtype, not at every step), and the current step's sigma (read from the device once
    per model call, not once per layer)."""

    def __init__(self, adapter, cond_tokens, uncond_tokens):
        self.adapter, self.cond_tokens, self.uncond_tokens = adapter, cond_tokens, uncond_tokens
        self._keys_values: dict[tuple, tuple] = {}
        self._sigmas, self._sigma = None, None

    def sigma(self, extra_options) -> float | None:
        sigmas = extra_options.get("sigmas")
        if sigmas is None:
            return None
        if sigmas is not self._sigmas:  # one tensor per model call, the same object in every layer
            self._sigmas, self._sigma = sigmas, float(sigmas.max())
        return self._sigma

    def keys_values(self, layer_index: int, cond_or_uncond: list[int], batch: int, like: torch.Tensor):
        """Keys and values over the ip tokens for a query batch made of `cond_or_uncond` chunks."""
        per_kind = {kind: self._cached(layer_index, kind, like) for kind in set(cond_or_uncond)}
        per_chunk = batch // len(cond_or_uncond)
        chunks = [per_kind[kind] for kind in cond_or_uncond]
        return tuple(torch.cat([_repeat_to(c[i], per_chunk) for c in chunks]) for i in (0, 1))

    def _cached(self, layer_index: int, kind: int, like: torch.Tensor):
        key = (layer_index, kind, like.device, like.dtype)
        if key not in self._keys_values:
            tokens = self.uncond_tokens if kind == 1 else self.cond_tokens
            with torch.no_grad():
                k, v = self.adapter.ip_keys_values(layer_index, tokens)  # one entry per image of I_res
            self._keys_values[key] = (k.to(like.device, like.dtype), v.to(like.device, like.dtype))
        return self._keys_values[key]


def _repeat_to(x: torch.Tensor, n: int) -> torch.Tensor:
    """Per-image keys/values for a chunk of n: as they are when there is one per item, else repeated."""
    if x.shape[0] == n:
        return x
    return x.repeat((n + x.shape[0] - 1) // x.shape[0], 1, 1)[:n]


class ColourAttention:
    """attn2 replace patch for one cross-attention layer: the layer's attention plus `weight` times the
    attention over the colour adapter's image tokens (IP-Adapter's decoupled cross-attention); outside
    [sigma_end, sigma_start] only the layer's attention.

    It composes with other attn2 patches instead of replacing them:
    - a patch already at this layer (another pack's, or a second colour adapter) is `previous`, and its
      output is the base our term is added to;
    - a patch that comes later may `add` its term, as ComfyUI_IPAdapter_plus does with the patch it finds:
      `callback(out, q, k, v, extra_options, **kwargs)` is added within kwargs' sigma_start/sigma_end.
    The attention runs through ComfyUI's `optimized_attention` with the transformer options, so attention
    overrides (SageAttention and the like) apply to it."""

    def __init__(self, run: AdapterRun, layer_index: int, weight: float, sigma_start: float, sigma_end: float,
                 previous=None):
        self.run, self.layer_index, self.previous = run, layer_index, previous
        self.weight, self.sigma_start, self.sigma_end = weight, sigma_start, sigma_end
        self.added: list[tuple] = []

    def __deepcopy__(self, memo):
        """ComfyUI 0.3.75's ModelPatcher.clone() deep-copies model_options, patches included: every later clone
        of the MODEL would copy the whole adapter (0.85 GB at real size). A copy shares the adapter and the
        tokens; only the list of added terms is its own."""
        c = copy.copy(self)
        c.added = list(self.added)
        return c

    def add(self, callback, **kwargs):
        """ComfyUI_IPAdapter_plus's protocol for adding a term to the patch it finds at a layer."""
        self.added.append((callback, kwargs))

    def __call__(self, q, k, v, extra_options):
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            out = _attention(q, k, v, extra_options)
        sigma = self.run.sigma(extra_options)
        if sigma is None or self.sigma_end <= sigma <= self.sigma_start:
            cond_or_uncond = extra_options.get("cond_or_uncond", [0])
            k_ip, v_ip = self.run.keys_values(self.layer_index, cond_or_uncond, q.shape[0], q)
            out = out + self.weight * _attention(q, k_ip, v_ip, extra_options)
        for callback, kwargs in self.added:
            if sigma is None or kwargs.get("sigma_end", -1.0) <= sigma <= kwargs.get("sigma_start", float("inf")):
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out


def _attention(q, k, v, extra_options):
    """ComfyUI's attention as attn2 itself runs it: read at call time (packs may swap the function), with the
    layer's precision and, where core takes them (0.3.60+), the transformer options for attention overrides."""
    kwargs = {"attn_precision": extra_options.get("attn_precision")}
    if _TAKES_TRANSFORMER_OPTIONS:
        kwargs["transformer_options"] = extra_options
    return attention.optimized_attention(q, k, v, extra_options["n_heads"], **kwargs)


_TAKES_TRANSFORMER_OPTIONS = hasattr(attention, "wrap_attn")
ADAPTERS_KEY = "diffbody_colour_adapter"


def patch_colour_adapter(model, adapter, adapter_patcher, cond_tokens, uncond_tokens, weight: float,
                         start_percent: float, end_percent: float):
    """A clone of MODEL with the adapter on every SDXL cross-attention layer (ComfyUI's attn2 replace
    patches, wrapping any patch already there), the adapter's weights registered so ComfyUI loads them with
    the UNet."""
    from ..models.unet_layout import comfy_attn2_locations

    patched = model.clone()
    sampling = patched.get_model_object("model_sampling")
    sigma_start = float(sampling.percent_to_sigma(start_percent))
    sigma_end = float(sampling.percent_to_sigma(end_percent))
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    run = AdapterRun(adapter, cond_tokens, uncond_tokens)
    for index, (block, number, transformer_index) in enumerate(comfy_attn2_locations(patched.model.model_config.unet_config)):
        previous = existing.get((block, number, transformer_index))
        patched.set_model_attn2_replace(ColourAttention(run, index, weight, sigma_start, sigma_end, previous),
                                        block, number, transformer_index)
    adapters = patched.get_additional_models_with_key(ADAPTERS_KEY)  # a second colour adapter adds its own
    patched.set_additional_models(ADAPTERS_KEY, adapters + [adapter_patcher])
    return patched
