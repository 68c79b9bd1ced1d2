"""DiffBody stage 2 on diffusers: SDXL + the multi-prior ControlNet + the colour adapter.

For the command line, the evaluation and training previews (ComfyUI runs stage 2 through its own sampler
with our ControlNet and adapter patched in). Paper section 3.3: the ControlNet gets
c_g = sum_i a_i F_i(prior_i) from I_ir, I_pose, I_depth, I_normal; the colour adapter gets the CLIP
image features of I_res; the caption p' conditions through SDXL's text encoders. Paper inference: DDPM,
200 steps.

Conventions (stage 1's: schedulers, seeds, the timestep guard and the guidance order come from
pipelines/sampling.py):
- Schedulers on SDXL 1.0's training schedule (scheduler_config.json: 1000 steps, scaled_linear betas
  0.00085..0.012, epsilon, steps_offset 1, "leading" spacing): "ddpm" (the paper's), "ddim" (eta 0),
  "dpmpp_2m" (DPM-Solver++ 2M), "dpmpp_2m_karras" (on Karras sigmas), "euler" (EulerDiscrete).
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
from typing import TYPE_CHECKING, Callable, Mapping

import torch

from ..models.multiprior_controlnet import PRIORS, MultiPriorControlNet
from .clip_image import clip_image_features, clip_pixels
from .colour_attention import colour_adapter_installed
from .sampling import guidance_batch, guided, initial_noise, item_generators, scheduler_for_steps, scheduler_step
from .stage2_errors import Stage2Error
from .union_control import UnionPriorControl

if TYPE_CHECKING:
    from ..models.colour_adapter import ColourAdapter

ProgressFn = Callable[[int, int], None]

SCHEDULERS = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "euler")
DEFAULT_STEPS = {"ddpm": 200, "ddim": 50, "dpmpp_2m": 30, "dpmpp_2m_karras": 30, "euler": 30}
# stabilityai/stable-diffusion-xl-base-1.0, scheduler/scheduler_config.json (an EulerDiscreteScheduler there).
SDXL_TRAINING_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1,
                              timestep_spacing="leading")


def active_at(timestep: float, start: float, end: float) -> bool:
    """ComfyUI's start/end percent rule on the 0..999 timestep scale (see the module doc)."""
    upper = float("inf") if start <= 0 else (1.0 - start) * 999.0
    lower = float("-inf") if end >= 1 else (1.0 - end) * 999.0
    return lower <= float(timestep) <= upper


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
    # 1: sample from pure noise; below 1 (with a `start` image): start from that image's latent noised to this
    # fraction of the schedule and run the last `denoise` of the steps, as ComfyUI's KSampler `denoise` does
    # (the face pass: low denoise keeps the face, the priors steer the details)
    denoise: float = 1.0

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
                 progress: ProgressFn | None = None, start: torch.Tensor | None = None) -> torch.Tensor:
        """Restore: priors {"image": I_ir, "pose", "depth", "normal"} (B,3,H,W) in 0..1 (those with
        strength 0 may be absent), restored = I_res (B,3,H,W) for the colour adapter. Returns (B,3,H,W)
        float32 in 0..1 on the CPU. `prompt_embeds` / `negative_prompt_embeds`: (context, pooled) pairs
        instead of text. `start`: (B,3,H,W) image to start from with settings.denoise below 1."""
        latents = self.sample_latents(priors, restored, settings, prompt_embeds=prompt_embeds,
                                      negative_prompt_embeds=negative_prompt_embeds, progress=progress, start=start)
        return self.decode(latents)

    @torch.no_grad()
    def sample_latents(self, priors, restored=None, settings: Stage2Settings | None = None, *,
                       prompt_embeds=None, negative_prompt_embeds=None, progress: ProgressFn | None = None,
                       start: torch.Tensor | None = None) -> torch.Tensor:
        """The denoised SDXL latents (B,4,H/8,W/8), scaled as the UNet sees them (before VAE unscaling)."""
        s = settings or Stage2Settings()
        batch, height, width = self._check_images(priors, restored, start)
        if not 0 < s.denoise <= 1 or (s.denoise < 1 and start is None):
            raise Stage2Error(f"denoise must be in (0, 1], and below 1 needs a start image; got {s.denoise} "
                              f"{'without' if start is None else 'with'} one")
        use_control = self.controlnet is not None and MultiPriorControlNet.is_active(s.strengths, s.control_scale)
        use_adapter = s.adapter_weight != 0
        self._check_components(s, use_control, use_adapter, restored)
        cfg_on = s.cfg != 1.0
        context, pooled = self._prompt(s.prompt, prompt_embeds, batch)
        if cfg_on:
            neg_context, neg_pooled = self._prompt(s.negative_prompt, negative_prompt_embeds, batch)
            context, pooled = guidance_batch(neg_context, context), guidance_batch(neg_pooled, pooled)
        context, pooled = context.to(self.device, self.dtype), pooled.to(self.device, self.dtype)
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.dtype,
                                device=self.device).repeat(context.shape[0], 1)
        control = self._prior_control(priors, s, cfg_on, context, pooled, time_ids) if use_control else None
        tokens = self._adapter_tokens(restored, cfg_on) if use_adapter else None
        start_latents = self.encode(start) if start is not None and s.denoise < 1 else None
        return self._denoise(s, batch, (height // 8, width // 8), context, pooled, time_ids, control, tokens,
                             progress, start_latents)

    def _denoise(self, s: Stage2Settings, batch, latent_size, context, pooled, time_ids, control_fn, tokens,
                 progress, start_latents: torch.Tensor | None = None) -> torch.Tensor:
        steps = s.steps or DEFAULT_STEPS[s.scheduler]
        scheduler = scheduler_for_steps(s.scheduler, steps, SDXL_TRAINING_SCHEDULE, device=self.device)
        generators = item_generators(s.seed, batch)
        noise = initial_noise(generators, (batch, self.unet.config.in_channels, *latent_size)).to(self.device)
        timesteps = scheduler.timesteps
        if start_latents is None:
            latents = noise * scheduler.init_noise_sigma
        else:
            # diffusers' img2img: skip the first (1 - denoise) of the schedule, noise the start to where it begins
            skipped = (len(timesteps) - max(1, round(len(timesteps) * s.denoise))) * scheduler.order
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(skipped)
            timesteps = timesteps[skipped:]
            latents = scheduler.add_noise(start_latents.to(self.device, torch.float32), noise, timesteps[:1])
        installed = (colour_adapter_installed(self.unet, self.adapter) if tokens is not None
                     else contextlib.nullcontext())
        with installed as adapter_state:
            for i, t in enumerate(timesteps):
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
                    noise_pred = guided(noise_pred, s.cfg)
                latents = scheduler_step(scheduler, noise_pred, t, latents, generators)
                if progress is not None:
                    progress(i + 1, len(timesteps))
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
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in 0..1 -> scaled latents (the mean of the VAE's posterior, one image at a time)."""
        param = next(self.vae.parameters())
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        latents = [self.vae.encode(image[None].to(param.device, param.dtype) * 2 - 1).latent_dist.mean
                   for image in images]
        return (torch.cat(latents).float() - shift) * self.vae.config.scaling_factor

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

    def _check_images(self, priors, restored, start=None) -> tuple[int, int, int]:
        images = [img for img in (*priors.values(), restored, start) if img is not None]
        if not images:
            raise Stage2Error("stage 2 needs at least one image (a prior or the restored image) to know the size")
        shapes = {tuple(img.shape) for img in images}
        if len(shapes) != 1:
            raise Stage2Error(f"the priors, the restored image and the start image must share one (B,3,H,W) shape, "
                              f"got {sorted(shapes)}")
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
            tokens = guidance_batch(self.adapter.project(clip_image_features(encoder, torch.zeros_like(pixels))), tokens)
        return tokens
