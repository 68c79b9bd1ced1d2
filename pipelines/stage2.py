"""DiffBody stage 2 on diffusers: SDXL + the multi-prior ControlNet + the colour adapter.

For the command line, the evaluation and training previews (ComfyUI runs stage 2 through its own sampler
with our ControlNet and adapter patched in). Paper section 3.3: the ControlNet gets
c_g = sum_i a_i F_i(prior_i) from I_ir, I_pose, I_depth, I_normal; the colour adapter gets the CLIP
image features of I_res; the caption p' conditions through SDXL's text encoders. Paper inference: DDPM,
200 steps.

Conventions (the same as stage 1's sampler):
- Schedulers on SDXL 1.0's training schedule (scheduler_config.json: 1000 steps, scaled_linear betas
  0.00085..0.012, epsilon, steps_offset 1, "leading" spacing): "ddpm" (the paper's), "ddim" (eta 0),
  "dpmpp_2m" (DPM-Solver++ 2M), "euler" (EulerDiscrete).
- Seeds: item i of a batch draws its initial noise and its DDPM step noise from its own CPU generator
  seeded seed + i, so an item's result does not depend on the rest of the batch or on the device.
- Classifier-free guidance: negative prompt + the colour adapter's unconditional tokens (the CLIP
  features of an all-zero CLIP input, as IP-Adapter does) in one half, prompt + I_res tokens in the
  other; the ControlNet acts on both halves (ComfyUI's "Apply ControlNet" on positive and negative).
  cfg 1 skips the unconditional half.
- start/end percent: ComfyUI's rule, so both hosts switch the control at the same steps: a part is
  active at timestep t iff (1 - end) * 999 <= t <= (1 - start) * 999 (start 0 and end 1: always).
- Exactness: with every strength 0 (or control scale 0, or outside its range) the ControlNet is not
  run and nothing is added to the UNet; with adapter weight 0 (or outside its range) the attention
  processors call the UNet's own processors. The result is then bit-for-bit the plain SDXL one.

Public-weights mode: the same pipeline with a UnionPriorControl (ControlNet-Union SDXL, each prior as its
union control type) in place of the multi-prior ControlNet, and IP-Adapter Plus XL as the colour adapter
(fed I_ir, as there is no stage-1 I_res).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F

from ..models.errors import DiffBodyError
from ..models.multiprior_controlnet import PRIORS, MultiPriorControlNet

if TYPE_CHECKING:
    from ..models.colour_adapter import ColourAdapter

ProgressFn = Callable[[int, int], None]

SCHEDULERS = ("ddpm", "ddim", "dpmpp_2m", "euler")
DEFAULT_STEPS = {"ddpm": 200, "ddim": 50, "dpmpp_2m": 30, "euler": 30}
# stabilityai/stable-diffusion-xl-base-1.0, scheduler/scheduler_config.json (an EulerDiscreteScheduler there).
SDXL_TRAINING_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1,
                              timestep_spacing="leading")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Stage2Error(DiffBodyError, ValueError):
    """Stage-2 inputs or components that do not fit together."""


def make_scheduler(name: str):
    """A fresh diffusers scheduler `name` (one of SCHEDULERS) on SDXL's training schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    if name == "ddpm":
        return DDPMScheduler(**SDXL_TRAINING_SCHEDULE, variance_type="fixed_small", clip_sample=False)
    if name == "ddim":
        return DDIMScheduler(**SDXL_TRAINING_SCHEDULE, set_alpha_to_one=False, clip_sample=False)
    if name == "dpmpp_2m":
        return DPMSolverMultistepScheduler(**SDXL_TRAINING_SCHEDULE, algorithm_type="dpmsolver++", solver_order=2,
                                           lower_order_final=True)
    if name == "euler":
        return EulerDiscreteScheduler(**SDXL_TRAINING_SCHEDULE, interpolation_type="linear")
    raise Stage2Error(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


def active_at(timestep: float, start: float, end: float) -> bool:
    """ComfyUI's start/end percent rule on the 0..999 timestep scale (see the module doc)."""
    upper = float("inf") if start <= 0 else (1.0 - start) * 999.0
    lower = float("-inf") if end >= 1 else (1.0 - end) * 999.0
    return lower <= float(timestep) <= upper


# -- colour adapter in diffusers' attention ---------------------------------------------------------------

@dataclass
class AdapterState:
    """What the installed processors read at each UNet call: ip tokens for the whole UNet batch and the
    weight (0 = off: the UNet's own processors run)."""

    tokens: torch.Tensor | None = None
    weight: float = 0.0


class ColourAdapterProcessor:
    """attn2 processor: the UNet's attention plus weight * the adapter's attention over ip tokens, added
    before to_out (as IP-Adapter's processor). Off (weight 0 or no tokens): calls the original processor."""

    def __init__(self, base, adapter: "ColourAdapter", layer_index: int, state: AdapterState):
        self.base, self.adapter, self.layer_index, self.state = base, adapter, layer_index, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if self.state.weight == 0 or self.state.tokens is None:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None \
                or attn.norm_q is not None or attention_mask is not None:
            raise Stage2Error("the colour adapter supports SDXL's plain cross-attention layers only")
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads

        def heads(x):
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        query = heads(query)
        out = F.scaled_dot_product_attention(query, heads(key), heads(value), dropout_p=0.0, is_causal=False)
        extra = self.adapter.ip_attention(self.layer_index, query, self.state.tokens, attn.heads)
        out = out + self.state.weight * extra
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def colour_adapter_installed(unet, adapter: "ColourAdapter") -> Iterator[AdapterState]:
    """Install the adapter's processors on `unet`'s cross-attentions for the duration of the block (the
    UNet's own processors come back afterwards, even on error). Yields the AdapterState to set."""
    original = dict(unet.attn_processors)
    missing = [name for name in adapter.layer_names() if name not in original]
    if missing:
        raise Stage2Error(f"the colour adapter does not fit this UNet: it has no layer {missing[0]!r}")
    state = AdapterState()
    processors = dict(original)
    for index, name in enumerate(adapter.layer_names()):
        processors[name] = ColourAdapterProcessor(original[name], adapter, index, state)
    unet.set_attn_processor(processors)
    try:
        yield state
    finally:
        unet.set_attn_processor(original)


def clip_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B,3,H,W) 0..1 -> CLIP input (B,3,size,size): short side to `size` (bicubic, antialiased), centre
    crop, quantised to 8 bits, normalised - the same steps as ComfyUI's clip_preprocess."""
    height, width = images.shape[-2:]
    if (height, width) != (size, size):
        scale = size / min(height, width)
        images = F.interpolate(images, size=(round(scale * height), round(scale * width)), mode="bicubic",
                               antialias=True)
        top, left = (images.shape[2] - size) // 2, (images.shape[3] - size) // 2
        images = images[:, :, top:top + size, left:left + size]
    images = torch.clip(255.0 * images, 0, 255).round() / 255.0
    mean = torch.tensor(CLIP_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


# -- public-weights mode: ControlNet-Union SDXL as the prior control -------------------------------------

Residuals = tuple[list[torch.Tensor], torch.Tensor]


class UnionPriorControl:
    """ControlNet-Union SDXL (a diffusers ControlNetUnionModel) standing in for the multi-prior ControlNet:
    each prior with a_i != 0 is one single-type pass with its union control type (models.union_controlnet:
    I_ir as tile, I_pose as openpose, depth, normal), its residuals scaled by a_i * control scale, and the
    passes' residuals summed. That is what the ComfyUI node chains (nodes/stage2.py union_priors_control).

    Passes run one image at a time: the union's condition transformer is a sequence-first
    nn.MultiheadAttention given batch-first tensors (xinsir's code, kept by diffusers), so a batched call
    attends across the batch (the CFG halves, other images). Image by image it matches ComfyUI's
    computation, and an image's result does not depend on the rest of its batch."""

    is_active = staticmethod(MultiPriorControlNet.is_active)

    def __init__(self, union_model):
        self.model = union_model

    @property
    def num_control_type(self) -> int:
        return int(self.model.config.num_control_type)

    def prepare_priors(self, priors: Mapping[str, torch.Tensor | None], strengths: Mapping[str, float],
                       repeats: int = 1) -> dict[str, torch.Tensor]:
        """The active priors' images (a_i != 0), each (B,3,H,W) 0..1 repeated `repeats` times along the
        batch (CFG), in the union's dtype and device."""
        from ..models.union_controlnet import UNION_TYPES, check_union_types

        unknown = sorted(set(strengths) - set(UNION_TYPES))
        if unknown:
            raise Stage2Error(f"unknown priors {unknown}; ControlNet-Union takes {', '.join(UNION_TYPES)}")
        active = [name for name in UNION_TYPES if float(strengths.get(name, 0.0)) != 0.0]
        absent = [name for name in active if priors.get(name) is None]
        if absent:
            raise Stage2Error(f"prior strengths are set for {absent} but those priors were not given")
        check_union_types(self.num_control_type, active)
        param = next(self.model.parameters())
        return {name: torch.cat([priors[name]] * repeats).to(param.device, param.dtype) for name in active}

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, timestep, context: torch.Tensor, pooled: torch.Tensor,
                 time_ids: torch.Tensor, images: Mapping[str, torch.Tensor], strengths: Mapping[str, float],
                 conditioning_scale: float = 1.0) -> Residuals:
        """Summed residuals for the UNet batch `sample` (N,4,h,w); images from `prepare_priors` (N,3,8h,8w)."""
        from ..models.union_controlnet import UNION_TYPES

        param = next(self.model.parameters())
        per_image = []
        for i in range(sample.shape[0]):
            one = dict(sample=sample[i:i + 1].to(param.device, param.dtype),
                       encoder_hidden_states=context[i:i + 1].to(param.device, param.dtype),
                       added_cond_kwargs={"text_embeds": pooled[i:i + 1].to(param.device, param.dtype),
                                          "time_ids": time_ids[i:i + 1].to(param.device, param.dtype)})
            total: Residuals | None = None
            for name, image in images.items():
                control_type = torch.zeros(1, self.num_control_type, device=param.device, dtype=param.dtype)
                control_type[0, UNION_TYPES[name]] = 1.0
                down, mid = self.model(timestep=timestep, controlnet_cond=[image[i:i + 1]], control_type=control_type,
                                       control_type_idx=[UNION_TYPES[name]],
                                       conditioning_scale=float(strengths[name]) * float(conditioning_scale),
                                       return_dict=False, **one)
                total = (list(down), mid) if total is None else \
                    ([a + b for a, b in zip(total[0], down)], total[1] + mid)
            per_image.append(total)
        down = [torch.cat([residuals[0][k] for residuals in per_image]) for k in range(len(per_image[0][0]))]
        return down, torch.cat([residuals[1] for residuals in per_image])


# -- sampling -------------------------------------------------------------------------------------------

@dataclass
class Stage2Settings:
    """Sampling settings. `strengths` are a1..a4 by prior name (absent = 0)."""

    prompt: str | list[str] = ""
    negative_prompt: str | list[str] = ""
    scheduler: str = "dpmpp_2m"
    steps: int | None = None  # None: DEFAULT_STEPS[scheduler]
    cfg: float = 5.0
    seed: int = 0
    strengths: dict[str, float] = field(default_factory=lambda: {p: 1.0 for p in PRIORS})
    control_scale: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0
    adapter_weight: float = 1.0
    adapter_start: float = 0.0
    adapter_end: float = 1.0

    @classmethod
    def paper(cls, **overrides) -> "Stage2Settings":
        """The paper's inference: DDPM, 200 steps."""
        return cls(**{"scheduler": "ddpm", "steps": 200, **overrides})


class Stage2Pipeline:
    """SDXL UNet + multi-prior ControlNet + colour adapter, all diffusers/torch modules.

    unet: diffusers UNet2DConditionModel (SDXL layout); vae: diffusers AutoencoderKL; text_encoders:
    SDXLTextEncoders (or anything with `encode(prompts) -> (context, pooled)`), may be None when prompt
    embeddings are given; controlnet: MultiPriorControlNet, UnionPriorControl (public-weights mode) or
    None; adapter: ColourAdapter or None;
    image_encoder: transformers CLIPVisionModelWithProjection (needed with the adapter)."""

    def __init__(self, unet, vae, text_encoders, controlnet: "MultiPriorControlNet | UnionPriorControl | None" = None,
                 adapter: "ColourAdapter | None" = None, image_encoder=None):
        self.unet, self.vae, self.text_encoders = unet, vae, text_encoders
        self.controlnet, self.adapter, self.image_encoder = controlnet, adapter, image_encoder

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def __call__(self, priors: Mapping[str, torch.Tensor | None], restored: torch.Tensor | None = None,
                 settings: Stage2Settings | None = None, *, prompt_embeds=None, negative_prompt_embeds=None,
                 progress: ProgressFn | None = None) -> torch.Tensor:
        """Restore: priors {"image": I_ir, "pose", "depth", "normal"} (B,3,H,W) in 0..1 (those with
        strength 0 may be absent), restored = I_res (B,3,H,W) for the colour adapter. Returns (B,3,H,W)
        float32 in 0..1 on the CPU. `prompt_embeds` / `negative_prompt_embeds`: (context, pooled) pairs
        instead of text."""
        latents = self.sample_latents(priors, restored, settings, prompt_embeds=prompt_embeds,
                                      negative_prompt_embeds=negative_prompt_embeds, progress=progress)
        return self.decode(latents)

    @torch.no_grad()
    def sample_latents(self, priors, restored=None, settings: Stage2Settings | None = None, *,
                       prompt_embeds=None, negative_prompt_embeds=None, progress: ProgressFn | None = None
                       ) -> torch.Tensor:
        """The denoised SDXL latents (B,4,H/8,W/8), scaled as the UNet sees them (before VAE unscaling)."""
        s = settings or Stage2Settings()
        batch, height, width = self._check_images(priors, restored)
        use_control = self.controlnet is not None and MultiPriorControlNet.is_active(s.strengths, s.control_scale)
        use_adapter = s.adapter_weight != 0
        self._check_components(s, use_control, use_adapter, restored)
        cfg_on = s.cfg != 1.0
        context, pooled = self._prompt(s.prompt, prompt_embeds, batch)
        if cfg_on:
            neg_context, neg_pooled = self._prompt(s.negative_prompt, negative_prompt_embeds, batch)
            context, pooled = torch.cat([neg_context, context]), torch.cat([neg_pooled, pooled])
        context, pooled = context.to(self.device, self.dtype), pooled.to(self.device, self.dtype)
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.dtype,
                                device=self.device).repeat(context.shape[0], 1)
        control = self._prior_control(priors, s, cfg_on, context, pooled, time_ids) if use_control else None
        tokens = self._adapter_tokens(restored, cfg_on) if use_adapter else None
        return self._denoise(s, batch, (height // 8, width // 8), context, pooled, time_ids, control, tokens,
                             progress)

    def _denoise(self, s: Stage2Settings, batch, latent_size, context, pooled, time_ids, control_fn, tokens,
                 progress) -> torch.Tensor:
        scheduler = make_scheduler(s.scheduler)
        steps = s.steps or DEFAULT_STEPS[s.scheduler]
        scheduler.set_timesteps(steps, device=self.device)
        generators = [torch.Generator("cpu").manual_seed(int(s.seed) + i) for i in range(batch)]
        channels = self.unet.config.in_channels
        noise = torch.cat([torch.randn((1, channels, *latent_size), generator=g) for g in generators])
        latents = noise.to(self.device) * scheduler.init_noise_sigma
        installed = (colour_adapter_installed(self.unet, self.adapter) if tokens is not None
                     else contextlib.nullcontext())
        with installed as adapter_state:
            for i, t in enumerate(scheduler.timesteps):
                model_in = torch.cat([latents] * (context.shape[0] // batch))
                model_in = scheduler.scale_model_input(model_in, t).to(self.dtype)
                control = None
                if control_fn is not None and active_at(t, s.control_start, s.control_end):
                    control = control_fn(model_in, t)
                if adapter_state is not None:
                    on = active_at(t, s.adapter_start, s.adapter_end)
                    adapter_state.tokens, adapter_state.weight = tokens, (s.adapter_weight if on else 0.0)
                noise_pred = self._unet(model_in, t, context, pooled, time_ids, control).float()
                if context.shape[0] != batch:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + s.cfg * (cond - uncond)
                latents = _step(scheduler, noise_pred, t, latents, generators)
                if progress is not None:
                    progress(i + 1, len(scheduler.timesteps))
        return latents

    def _unet(self, sample, t, context, pooled, time_ids, control) -> torch.Tensor:
        extra = {}
        if control is not None:
            down, mid = control
            extra = {"down_block_additional_residuals": [d.to(self.dtype) for d in down],
                     "mid_block_additional_residual": mid.to(self.dtype)}
        return self.unet(sample, t, encoder_hidden_states=context,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}, **extra).sample

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> (B,3,H,W) float32 in 0..1 on the CPU, in the VAE's dtype (use an fp16-safe
        SDXL VAE, or a float32 one: the original SDXL VAE overflows in fp16)."""
        param = next(self.vae.parameters())
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        unscaled = latents.float() / self.vae.config.scaling_factor + shift
        pixels = self.vae.decode(unscaled.to(param.device, param.dtype)).sample
        return ((pixels.float() + 1.0) / 2.0).clamp(0, 1).cpu()

    # -- inputs ---------------------------------------------------------------------------------------

    def _check_images(self, priors, restored) -> tuple[int, int, int]:
        images = [img for img in priors.values() if img is not None]
        if restored is not None:
            images.append(restored)
        if not images:
            raise Stage2Error("stage 2 needs at least one image (a prior or the restored image) to know the size")
        shapes = {tuple(img.shape) for img in images}
        if len(shapes) != 1:
            raise Stage2Error(f"the priors and the restored image must share one (B,3,H,W) shape, got {sorted(shapes)}")
        batch, channels, height, width = shapes.pop()
        multiple = 8 * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if channels != 3 or height % multiple or width % multiple:
            raise Stage2Error(f"stage-2 images must be (B,3,H,W) with H and W multiples of {multiple}, "
                              f"got {(batch, channels, height, width)}")
        return batch, height, width

    def _check_components(self, s: Stage2Settings, use_control: bool, use_adapter: bool, restored) -> None:
        if s.scheduler not in SCHEDULERS:
            raise Stage2Error(f"unknown scheduler {s.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if self.controlnet is None and MultiPriorControlNet.is_active(s.strengths, s.control_scale):
            raise Stage2Error("prior strengths are set but no stage-2 ControlNet was given")
        if use_adapter and (self.adapter is None or self.image_encoder is None):
            raise Stage2Error("adapter_weight is not 0 but the colour adapter or the CLIP image encoder is missing")
        if use_adapter and restored is None:
            raise Stage2Error("adapter_weight is not 0 but no restored image (I_res) was given")

    def _prompt(self, text, embeds, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if embeds is not None:
            context, pooled = embeds
        else:
            if self.text_encoders is None:
                raise Stage2Error("no text encoders: pass prompt_embeds / negative_prompt_embeds instead")
            prompts = [text] * batch if isinstance(text, str) else list(text)
            if len(prompts) != batch:
                raise Stage2Error(f"{len(prompts)} prompts for {batch} images")
            context, pooled = self.text_encoders.encode(prompts)
        if context.shape[0] == 1 and batch > 1:
            context, pooled = context.expand(batch, -1, -1), pooled.expand(batch, -1)
        if context.shape[-1] != self.unet.config.cross_attention_dim:
            raise Stage2Error(f"text context width {context.shape[-1]} does not match the UNet's "
                              f"{self.unet.config.cross_attention_dim}")
        return context, pooled

    def _prior_control(self, priors, s: Stage2Settings, cfg_on: bool, context, pooled, time_ids
                       ) -> Callable[[torch.Tensor, torch.Tensor], tuple[list[torch.Tensor], torch.Tensor]]:
        """(UNet batch, t) -> (down residuals, mid residual), bound to this run's priors and prompts. The
        prior inputs are prepared once; with CFG they are repeated for the unconditional half."""
        repeats = 2 if cfg_on else 1
        if isinstance(self.controlnet, UnionPriorControl):
            images = self.controlnet.prepare_priors(priors, s.strengths, repeats)
            return lambda sample, t: self.controlnet(sample, t, context, pooled, time_ids, images, s.strengths,
                                                     s.control_scale)
        embedding = self.controlnet.embed_priors(priors, s.strengths)
        embedding = torch.cat([embedding] * repeats)
        y = MultiPriorControlNet.sdxl_added_vector(pooled, time_ids)
        return lambda sample, t: self.controlnet(sample, t, context, y, embedding, s.control_scale)

    def _adapter_tokens(self, restored: torch.Tensor, cfg_on: bool) -> torch.Tensor:
        """ip tokens for the UNet batch: [unconditional (zeroed CLIP input), I_res] with CFG."""
        encoder = self.image_encoder
        param = next(encoder.parameters())
        pixels = clip_pixels(restored.float(), encoder.config.image_size).to(param.device, param.dtype)
        features = clip_image_features(encoder, pixels)
        tokens = self.adapter.project(features)
        if cfg_on:
            tokens = torch.cat([self.adapter.project(clip_image_features(encoder, torch.zeros_like(pixels))), tokens])
        return tokens


def clip_image_features(image_encoder, pixels: torch.Tensor) -> torch.Tensor:
    """Penultimate hidden states (B, tokens, width) of a transformers CLIP vision model."""
    return image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]


def _step(scheduler, noise_pred, t, latents, generators) -> torch.Tensor:
    """One scheduler step; DDPM's step noise comes from each item's own generator."""
    if len(generators) == 1:
        return scheduler.step(noise_pred, t, latents, generator=generators[0]).prev_sample
    from diffusers import DDPMScheduler

    if not isinstance(scheduler, DDPMScheduler):
        return scheduler.step(noise_pred, t, latents).prev_sample
    # DDPM: step each item with its own generator; the scheduler is stateless across items for DDPM
    return torch.cat([scheduler.step(noise_pred[i:i + 1], t, latents[i:i + 1], generator=g).prev_sample
                      for i, g in enumerate(generators)])
