"""Stage 2 inside ComfyUI's own sampler: a ControlBase subclass for the multi-prior ControlNet and an
attn2 replace patch for the colour adapter.

This is the one node module besides glue.py that imports ComfyUI at module level: it subclasses
ComfyUI's ControlBase. The node definitions (nodes/stage2.py) import it only when a node runs.
"""

from __future__ import annotations

import copy

import comfy.controlnet
import comfy.model_management
import comfy.utils
import torch
from comfy.ldm.modules.attention import optimized_attention

from ..models.multiprior_controlnet import PRIORS, MultiPriorControlNet
from . import glue


class MultiPriorControl(comfy.controlnet.ControlBase):
    """DiffBody's multi-prior ControlNet as a CONTROL_NET: stacks with other ControlNets, follows
    start/end percent and strength like ComfyUI's own, and lets ComfyUI load/offload the network.

    Priors come as IMAGEs (B,H,W,C in 0..1), converted once through the glue; c_g is computed once per
    latent size per run.
    With every prior strength (or the strength) at 0 it adds nothing, so sampling is exactly that of
    the unconditioned model."""

    def __init__(self, patcher):
        super().__init__()
        self.control_model_wrapped = patcher
        self.control_model: MultiPriorControlNet = patcher.model
        self.priors: dict[str, torch.Tensor] = {}
        self.prior_strengths: dict[str, float] = {}
        self.model_sampling_current = None
        self.cond_embedding = None

    def set_priors(self, priors: dict, strengths: dict, strength: float, percent_range: tuple[float, float]):
        unknown = set(priors) - set(PRIORS)
        if unknown:
            raise ValueError(f"DiffBody: unknown priors {sorted(unknown)}; expected {PRIORS}")
        self.priors = {name: glue.comfy_to_bchw(image) for name, image in priors.items() if image is not None}
        self.prior_strengths = {name: float(strengths.get(name, 0.0)) for name in self.priors}
        self.strength = strength
        self.timestep_percent_range = percent_range
        return self

    def set_cond_hint(self, cond_hint, strength=1.0, timestep_percent_range=(0.0, 1.0), vae=None, extra_concat=[]):
        # ComfyUI's stock "Apply ControlNet" hands one image as (B,3,H,W): back to IMAGE, the cleaned-image prior.
        super().set_cond_hint(cond_hint, strength, timestep_percent_range, vae, extra_concat)
        return self.set_priors({"image": cond_hint.movedim(1, -1)}, {"image": 1.0}, strength, timestep_percent_range)

    def active(self) -> bool:
        return MultiPriorControlNet.is_active(self.prior_strengths, self.strength)

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self.timestep_range is not None and (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]):
            return control_prev
        if not self.active():
            return control_prev
        dtype = next(self.control_model.parameters()).dtype
        size = (x_noisy.shape[-2] * 8, x_noisy.shape[-1] * 8)
        if self.cond_embedding is None or self.cond_embedding.shape[-2:] != x_noisy.shape[-2:]:
            resized = {name: comfy.utils.common_upscale(image, size[1], size[0], "bilinear", "center")
                       .to(x_noisy.device, dtype) for name, image in self.priors.items()}
            with torch.no_grad():
                self.cond_embedding = self.control_model.embed_priors(resized, self.prior_strengths)
        cond_embedding = self.cond_embedding
        if cond_embedding.shape[0] != x_noisy.shape[0]:
            cond_embedding = comfy.controlnet.broadcast_image_to(cond_embedding, x_noisy.shape[0], batched_number)
        context = cond.get("crossattn_controlnet", cond["c_crossattn"]).to(x_noisy.device, dtype)
        y = cond["y"].to(x_noisy.device, dtype)
        timestep = self.model_sampling_current.timestep(t).to(dtype)
        x_in = self.model_sampling_current.calculate_input(t, x_noisy).to(dtype)
        with torch.no_grad():
            down, mid = self.control_model(x_in, timestep, context, y, cond_embedding)
        # ComfyUI's UNet pops "output" residuals from the end as it pops its skips: encoder order.
        return self.control_merge({"output": list(down), "middle": [mid]}, control_prev, output_dtype=None)

    def copy(self):
        c = MultiPriorControl(self.control_model_wrapped)
        self.copy_to(c)
        c.priors, c.prior_strengths = dict(self.priors), dict(self.prior_strengths)
        return c

    def get_models(self):
        return super().get_models() + [self.control_model_wrapped]

    def pre_run(self, model, percent_to_timestep_function):
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling_current = model.model_sampling

    def cleanup(self):
        self.model_sampling_current = None
        self.cond_embedding = None
        super().cleanup()

    def inference_memory_requirements(self, dtype):
        return super().inference_memory_requirements(dtype) + comfy.model_management.module_size(self.control_model)


class ColourAttention:
    """attn2 replacement for one cross-attention layer: text attention plus `weight` times the
    attention over the colour adapter's image tokens (IP-Adapter's decoupled cross-attention).

    cond chunks use the tokens of I_res, uncond chunks those of a zeroed image, as IP-Adapter was
    trained; outside [sigma_end, sigma_start] the layer is plain text attention."""

    def __init__(self, adapter, layer_index: int, cond_tokens, uncond_tokens, weight: float,
                 sigma_start: float, sigma_end: float):
        self.adapter, self.layer_index = adapter, layer_index
        self.cond_tokens, self.uncond_tokens = cond_tokens, uncond_tokens
        self.weight, self.sigma_start, self.sigma_end = weight, sigma_start, sigma_end

    def __deepcopy__(self, memo):
        """ComfyUI 0.3.75's ModelPatcher.clone() deep-copies model_options, patches included: every later clone
        of the MODEL would copy the whole adapter (0.85 GB at real size). Patches are never changed in place, so
        a copy shares the adapter and the image tokens."""
        return copy.copy(self)

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        out = optimized_attention(q, k, v, heads)
        sigma = float(extra_options["sigmas"].max()) if "sigmas" in extra_options else None
        if sigma is not None and not (self.sigma_end <= sigma <= self.sigma_start):
            return out
        tokens = self._tokens_for(extra_options.get("cond_or_uncond", [0]), q.shape[0]).to(q.device, q.dtype)
        return out + self.weight * self.adapter.ip_attention(self.layer_index, q, tokens, heads)

    def _tokens_for(self, cond_or_uncond, batch: int):
        per_chunk = batch // len(cond_or_uncond)
        chunks = [_repeat_to(self.uncond_tokens if c == 1 else self.cond_tokens, per_chunk) for c in cond_or_uncond]
        return torch.cat(chunks)


def _repeat_to(tokens, n: int):
    if tokens.shape[0] == n:
        return tokens
    return tokens.repeat((n + tokens.shape[0] - 1) // tokens.shape[0], 1, 1)[:n]


def patch_colour_adapter(model, adapter, adapter_patcher, cond_tokens, uncond_tokens, weight: float,
                         start_percent: float, end_percent: float):
    """A clone of MODEL with the adapter on every SDXL cross-attention layer (ComfyUI's attn2 replace
    patches), the adapter's weights registered so ComfyUI loads them with the UNet."""
    from ..models.unet_layout import comfy_attn2_locations

    patched = model.clone()
    sampling = patched.get_model_object("model_sampling")
    sigma_start = float(sampling.percent_to_sigma(start_percent))
    sigma_end = float(sampling.percent_to_sigma(end_percent))
    locations = comfy_attn2_locations(patched.model.model_config.unet_config)
    for index, (block, number, transformer_index) in enumerate(locations):
        patched.set_model_attn2_replace(
            ColourAttention(adapter, index, cond_tokens, uncond_tokens, weight, sigma_start, sigma_end),
            block, number, transformer_index)
    patched.set_additional_models("diffbody_colour_adapter", [adapter_patcher])
    return patched
