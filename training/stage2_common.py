"""What the two stage-2 training phases share: frozen SDXL parts, the priors, noising, eq. 3/4's loss, previews.

The objective (paper eqs. 3 and 4): the SDXL latent of the photo is noised at one timestep per sample
(uniform over SDXL's 1000 training steps, its scaled-linear schedule, epsilon prediction) and the loss
is the mean squared error between the noise and SDXL's prediction, SDXL running with the multi-prior
ControlNet's residuals (and, in phase 4, the colour adapter's tokens in its cross-attentions).

Inputs of a training step, made as inference makes them:
- I_ir = SwinIR(I_LQ), I_LQ = Real-ESRGAN's random second-order degradation of the photo (drawn per
  image from the step's generator); the ControlNet's image prior is I_ir, NOT I_res (paper, the
  paragraph after eq. 3). Without `--swinir`, I_LQ itself (only if inference also skips the cleaner).
- I_pose, I_depth, I_normal: the item's annotations, made on the high-quality photo (the paper
  annotated its training set with MMPose, MiDaS and Omnidata, section 4.1): at training time they stand
  in for what stage 0/1 produce at inference.
- c_g = sum_i a_i F_i(prior_i) with the strengths `--prior_strengths` (default 1 each: the nodes'
  default). All four must be non-zero: a prior with strength 0 would get no gradient.
- The caption p through SDXL's two text encoders (context and pooled embedding), replaced by "" with
  probability `--caption_dropout` (the samplers' classifier-free guidance uses the empty prompt).
- SDXL's micro-conditioning (add_time_ids): (H, W, 0, 0, H, W), the original size, no crop and the
  target size, as the stage-2 sampler and ComfyUI pass them at inference. The prepared data holds
  bucket-sized crops whose original size is not recorded, so the bucket size is both.

Frozen parts: SDXL's UNet and text encoders in the mixed-precision dtype, its VAE in float32 (the
original SDXL VAE overflows in fp16; it also runs outside autocast), SwinIR in float32 (bf16 at most).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Sequence

import torch

from ..models.multiprior_controlnet import PRIORS, MultiPriorControlNet
from ..models.sd21_components import DiffusersVAE
from .loop import add_phase_arguments

NUM_TRAIN_TIMESTEPS = 1000

Generators = torch.Generator | list[torch.Generator]


def add_stage2_arguments(parser: argparse.ArgumentParser) -> None:
    """Data, SDXL, SwinIR, priors, dropout and preview settings common to both stage-2 phases."""
    from ..pipelines.stage2 import SCHEDULERS

    add_phase_arguments(parser, validation_schedulers=SCHEDULERS, validation_scheduler="dpmpp_2m", validation_cfg=5.0)
    parser.add_argument("--pretrained_sdxl", required=True,
                        help="SDXL 1.0 base as a diffusers folder (unet/, vae/, text_encoder{,_2}/, tokenizer{,_2}/): "
                             "its UNet, VAE and text encoders are used frozen")
    parser.add_argument("--sdxl_unet", default=None,
                        help="an original-layout single-file SDXL checkpoint (.safetensors, e.g. "
                             "sd_xl_base_1.0.safetensors or a fine-tune) whose UNet replaces the folder's; the folder "
                             "still gives the VAE, text encoders, tokenizers and the UNet's config")
    parser.add_argument("--swinir", default=None,
                        help="DiffBIR's SwinIR cleaner (general_swinir_v1.ckpt / realesrgan_s4_swinir_100k.pth) making "
                             "I_ir from the degraded photo; without it the ControlNet sees the degraded image itself")
    parser.add_argument("--degradation_scale", type=int, default=4,
                        help="Real-ESRGAN's down-scaling factor of the synthetic degradation")
    parser.add_argument("--prior_strengths", type=float, nargs=len(PRIORS), default=[1.0] * len(PRIORS),
                        metavar=tuple(s.upper() for s in PRIORS),
                        help="a_1..a_4 of c_g for the image, pose, depth and normal priors (all non-zero)")


def prior_strengths(args: argparse.Namespace) -> dict[str, float]:
    strengths = dict(zip(PRIORS, map(float, args.prior_strengths)))
    if not all(strengths.values()):
        raise SystemExit(f"--prior_strengths must all be non-zero (got {strengths}): a prior with strength 0 "
                         "is not used, so its extractor cannot be trained")
    return strengths


# ---- frozen SDXL ---------------------------------------------------------------------------------------

@dataclass
class FrozenSDXL:
    """SDXL's parts as the stage-2 phases use them (CPU, float32; run_training moves and casts them)."""

    unet: torch.nn.Module  # diffusers UNet2DConditionModel
    vae: DiffusersVAE
    text_encoders: object  # models.sdxl_components.SDXLTextEncoders

    @property
    def modules(self) -> list[torch.nn.Module]:
        """Frozen in the mixed-precision dtype (the VAE is not among them: see vae_module)."""
        return [self.unet, *self.text_encoders.encoders]

    @property
    def vae_module(self) -> torch.nn.Module:
        return self.vae.vae


def load_frozen_sdxl(folder: str, unet_file: str | None = None) -> FrozenSDXL:
    """SDXL from a diffusers folder (pipelines/stage2.py's loader), its UNet optionally replaced by the one
    of an original-layout single file (converted with the folder UNet's config)."""
    from ..models.stage2_weights import sdxl_unet_state_dict
    from ..models.sdxl_components import load_sdxl_parts

    unet, vae, text_encoders = load_sdxl_parts(folder)
    if unet_file:
        state_dict, _ = sdxl_unet_state_dict(unet_file, dict(unet.config))
        try:
            unet.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            raise SystemExit(f"--sdxl_unet {unet_file} does not fit the UNet config of {folder} ({e})") from e
    return FrozenSDXL(unet, DiffusersVAE(vae), text_encoders)


def controlnet_source(args: argparse.Namespace) -> tuple[str, dict | None]:
    """(the SDXL UNet the ControlNet's encoder is copied from, the UNet config of a single file)."""
    if args.sdxl_unet:
        import json

        with open(os.path.join(args.pretrained_sdxl, "unet", "config.json"), encoding="utf-8") as f:
            return args.sdxl_unet, json.load(f)
    return args.pretrained_sdxl, None


# ---- one training step's inputs ------------------------------------------------------------------------

def randn(shape: Sequence[int], generators: Generators, device: torch.device) -> torch.Tensor:
    """Standard normal draws of `shape` (batch first) from one generator, or one generator per item."""
    if isinstance(generators, list):
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device) for g in generators]).to(device)
    return torch.randn(tuple(shape), generator=generators, device=generators.device).to(device)


def rand(count: int, generators: Generators) -> torch.Tensor:
    """`count` uniform draws in [0, 1) on the CPU (for dropout decisions)."""
    if isinstance(generators, list):
        return torch.cat([torch.rand(1, generator=g, device=g.device) for g in generators]).cpu()
    return torch.rand(count, generator=generators, device=generators.device).cpu()


def randint(high: int, count: int, generators: Generators, device: torch.device) -> torch.Tensor:
    if isinstance(generators, list):
        return torch.cat([torch.randint(0, high, (1,), generator=g, device=g.device) for g in generators]).to(device)
    return torch.randint(0, high, (count,), generator=generators, device=generators.device).to(device)


def training_schedule():
    """SDXL 1.0's DDPM training schedule (the one the stage-2 sampler inverts)."""
    from ..pipelines.sampling import make_scheduler
    from ..pipelines.stage2 import SDXL_TRAINING_SCHEDULE

    return make_scheduler("ddpm", SDXL_TRAINING_SCHEDULE)


@dataclass
class Stage2Inputs:
    """One batch made ready for SDXL and the ControlNet."""

    noisy: torch.Tensor  # (B, 4, h, w) z_t
    noise: torch.Tensor  # (B, 4, h, w) eps
    timesteps: torch.Tensor  # (B,) long
    context: torch.Tensor  # (B, 77, D) text context c_t
    pooled: torch.Tensor  # (B, P) pooled text embedding
    time_ids: torch.Tensor  # (B, 6) micro-conditioning
    priors: dict[str, torch.Tensor]  # PRIORS -> (B, 3, H, W) in 0..1; "image" is I_ir

    @property
    def added_vector(self) -> torch.Tensor:
        """SDXL's ADM vector y for the ControlNet."""
        return MultiPriorControlNet.sdxl_added_vector(self.pooled, self.time_ids)

    def unet_kwargs(self) -> dict:
        return {"encoder_hidden_states": self.context,
                "added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": self.time_ids}}


def size_time_ids(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """SDXL's add_time_ids for uncropped images of (height, width): (B, 6)."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32, device=device).repeat(batch, 1)


def prepare_inputs(batch: dict, sdxl: FrozenSDXL, schedule, cleaner, caption_dropout: float,
                   degradation_scale: int, drop_captions: torch.Tensor | None = None) -> Stage2Inputs:
    """Degrade and clean the photos (I_ir), encode them, draw noise and timesteps, encode the captions, all
    from batch["generator"] (one for the batch, or a list with one per item). `drop_captions`: a (B,) bool
    mask to use instead of drawing one with `caption_dropout` (phase 4 draws its own, see there)."""
    from .shared import degraded_and_cleaned

    generators = batch["generator"]
    images = batch["image"]
    size, device = images.shape[0], images.device
    _, image_ir = degraded_and_cleaned(images, generators, cleaner, degradation_scale)
    with torch.autocast(device.type, enabled=False):  # the VAE stays float32 (fp16 overflows)
        latents = sdxl.vae.encode(images.float())
    noise = randn(latents.shape, generators, device)
    timesteps = randint(NUM_TRAIN_TIMESTEPS, size, generators, device)
    noisy = schedule.add_noise(latents, noise, timesteps)
    if drop_captions is None:
        drop_captions = rand(size, generators) < caption_dropout
    captions = ["" if drop else caption for caption, drop in zip(batch["caption"], drop_captions.tolist())]
    context, pooled = sdxl.text_encoders.encode(captions)
    time_ids = size_time_ids(size, images.shape[-2], images.shape[-1], device)
    priors = {"image": image_ir, "pose": batch["pose"], "depth": batch["depth"], "normal": batch["normal"]}
    return Stage2Inputs(noisy, noise, timesteps, context.to(device), pooled.to(device), time_ids, priors)


def noise_loss(prediction: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Eq. 3 / 4: the mean squared error between the noise and its prediction."""
    return torch.nn.functional.mse_loss(prediction.float(), noise.float())


def unet_prediction(unet, inputs: Stage2Inputs, residuals) -> torch.Tensor:
    """SDXL's noise prediction with the ControlNet's (down residuals, mid residual) added, cast to the UNet's
    dtype as the stage-2 sampler does (accelerate returns a mixed-precision model's outputs in float32)."""
    down, mid = residuals
    dtype = unet.dtype
    return unet(inputs.noisy, inputs.timesteps, **inputs.unet_kwargs(),
                down_block_additional_residuals=[d.to(dtype) for d in down],
                mid_block_additional_residual=mid.to(dtype)).sample


# ---- previews ------------------------------------------------------------------------------------------

@dataclass
class PreviewItem:
    """A dataset item sampled at each validation, with its I_ir."""

    item: dict
    image_ir: torch.Tensor  # (3, H, W) on the CPU

    @property
    def priors(self) -> dict[str, torch.Tensor]:
        return {"image": self.image_ir[None], "pose": self.item["pose"][None], "depth": self.item["depth"][None],
                "normal": self.item["normal"][None]}


class Previews:
    """`--validation_count` dataset items (one per bucket size first); their I_ir is made once, at the first
    validation, on the training device (SwinIR on the CPU would be slow), from a generator seeded with --seed."""

    def __init__(self, dataset, args: argparse.Namespace, cleaner):
        from .stage1_common import validation_items

        self.items = validation_items(dataset, args.validation_count)
        self.seed, self.scale, self.cleaner = args.seed, args.degradation_scale, cleaner
        self._prepared: list[PreviewItem] = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def prepared(self, device: torch.device) -> list[PreviewItem]:
        from .shared import degraded_and_cleaned

        if not self._prepared:
            generator = torch.Generator().manual_seed(self.seed)
            for item in self.items:
                _, image_ir = degraded_and_cleaned(item["image"][None].to(device), generator, self.cleaner, self.scale)
                self._prepared.append(PreviewItem(item, image_ir[0].cpu()))
        return self._prepared


def sample_previews(pipeline, previews: Previews, strengths: dict[str, float], folder: str, step: int,
                    args: argparse.Namespace, *, adapter_reference=None) -> list[str]:
    """Sample each preview with pipelines/stage2.py (Stage2Pipeline `pipeline`) and write
    `step-<step>_<id>.png`: [I_ir, pose, sampled, depth, normal, ground-truth photo] (the
    stage-1 previews' order, the priors in place of stage 1's outputs).
    adapter_reference(preview) -> (1,3,H,W): the colour adapter's image (None: no adapter)."""
    from ..pipelines.stage2 import Stage2Settings
    from .stage1_common import save_preview_row

    written = []
    for preview in previews.prepared(pipeline.device):
        restored = adapter_reference(preview) if adapter_reference is not None else None
        settings = Stage2Settings(prompt=preview.item["caption"], scheduler=args.validation_scheduler,
                                  steps=args.validation_sampler_steps, cfg=args.validation_cfg, seed=0,
                                  strengths=strengths, adapter_weight=1.0 if restored is not None else 0.0)
        latents = pipeline.sample_latents(preview.priors, restored, settings)
        with torch.autocast(latents.device.type, enabled=False):  # the float32 VAE, as in training
            sampled = pipeline.decode(latents)[0]
        item = preview.item
        row = [preview.image_ir, item["pose"], sampled, item["depth"], item["normal"], item["image"]]
        written.append(save_preview_row(row, os.path.join(folder, f"step-{step:06d}_{item['id']}.png")))
    return written
