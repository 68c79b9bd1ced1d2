"""Tiny depth and normal estimators in the folder layouts of the public ones, built offline.

- Depth: `depth-anything/Depth-Anything-V2-*-hf` holds `config.json` (DepthAnythingForDepthEstimation:
  a DINOv2 backbone, patch 14, four hooked layers, a DPT-style neck and a relative-depth head),
  `model.safetensors` and `preprocessor_config.json` (DPTImageProcessor: keep the aspect ratio, multiples
  of 14, bicubic, ImageNet mean/std). We write the same with a 4-layer backbone of width 16 and a 28 px
  working size.
- Normals: `prs-eth/marigold-normals-v1-1` is a diffusers folder (`model_index.json` naming
  MarigoldNormalsPipeline, `unet/` with 8 input channels, `vae/`, `text_encoder/`, `tokenizer/`,
  `scheduler/`). The VAE, text encoder and tokenizer come from the tiny SD 2.1 builder (Marigold is
  fine-tuned from SD 2), the UNet is a 2-level one of width 16-32, the scheduler DDIM with trailing
  spacing and v-prediction; 2 steps and a 32 px working size by default.
"""

from __future__ import annotations

import json
import os

DEPTH_WORKING_SIZE = 28
NORMALS_WORKING_SIZE = 32
NORMALS_STEPS = 2
CONTEXT_DIM = 32


def write_tiny_depth_anything(model_dir: str, *, seed: int = 0) -> str:
    """Write a tiny Depth Anything (transformers layout) with its image processor into `model_dir`."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                            image_size=DEPTH_WORKING_SIZE, patch_size=14, out_indices=[1, 2, 3, 4],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=16,
                                 neck_hidden_sizes=[4, 8, 8, 16], fusion_hidden_size=8, head_hidden_size=4,
                                 depth_estimation_type="relative")
    return write_depth_anything(model_dir, config, working_size=DEPTH_WORKING_SIZE, seed=seed)


def write_depth_anything(model_dir: str, config, *, working_size: int, seed: int = 0) -> str:
    """A seeded DepthAnythingForDepthEstimation of `config` (a DepthAnythingConfig) saved as transformers
    does (config.json, model.safetensors) with Depth Anything's DPTImageProcessor at `working_size`
    (the short side, keeping the aspect ratio, in multiples of 14, bicubic, ImageNet mean/std)."""
    from transformers import DepthAnythingForDepthEstimation, DPTImageProcessor

    from . import seeded_init

    with seeded_init(seed):
        model = DepthAnythingForDepthEstimation(config).eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    DPTImageProcessor(do_resize=True, size={"height": working_size, "width": working_size},
                      keep_aspect_ratio=True, ensure_multiple_of=14, resample=3, do_rescale=True,
                      rescale_factor=1 / 255, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225], do_pad=False).save_pretrained(model_dir)
    return model_dir


def write_tiny_marigold_normals(model_dir: str, *, seed: int = 0) -> str:
    """Write a tiny Marigold normals pipeline folder (diffusers layout) into `model_dir`."""
    import torch
    from diffusers import UNet2DConditionModel

    from .sd21_components import write_tiny_sd21_components

    write_tiny_sd21_components(model_dir, context_dim=CONTEXT_DIM, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        unet = UNet2DConditionModel(
            sample_size=NORMALS_WORKING_SIZE // 8, in_channels=8, out_channels=4, layers_per_block=1,
            block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=CONTEXT_DIM,
            attention_head_dim=4, norm_num_groups=8).eval()
    unet.save_pretrained(os.path.join(model_dir, "unet"), safe_serialization=True)
    return write_marigold_normals_index(model_dir, steps=NORMALS_STEPS, processing_resolution=NORMALS_WORKING_SIZE)


def write_marigold_normals_index(model_dir: str, *, steps: int, processing_resolution: int) -> str:
    """The parts of a Marigold normals folder that hold no weights: `scheduler/` (DDIM on SD's training
    schedule, trailing timesteps, v-prediction) and `model_index.json` with the pipeline's defaults."""
    from diffusers import DDIMScheduler

    DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=0).save_pretrained(os.path.join(model_dir, "scheduler"))
    index = {"_class_name": "MarigoldNormalsPipeline", "_diffusers_version": "0.32.0",
             "default_denoising_steps": steps, "default_processing_resolution": processing_resolution,
             "prediction_type": "normals", "use_full_z_range": True,
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    with open(os.path.join(model_dir, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
    return model_dir
