"""Training phase 2: DiffBody's stage-1 ControlNet on the cleaned image latent, UNet frozen (paper eq. 2).

    python -m comfyui_diffbody.training.train_stage1_controlnet --data_root DATA --pretrained_sd21 SD21_FOLDER \
        --unet runs/stage1_unet/diffbody_stage1_unet.safetensors --swinir general_swinir_v1.ckpt \
        --output_dir runs/stage1_controlnet
    accelerate launch --multi_gpu --num_processes 8 -m comfyui_diffbody.training.train_stage1_controlnet ...

Each step makes the ControlNet's input as inference does: I_LQ = Real-ESRGAN's random second-order
degradation of the photo (training/degradations.py, x4 down and bicubically back up; its parameters
drawn per image from the step's generator), I_ir = SwinIR(I_LQ) with DiffBIR's cleaner run frozen
(`--swinir`; float32 or bf16, never fp16), c_r = E(I_ir). Without `--swinir` the ControlNet learns from
E(I_LQ) directly: use that only if inference will also skip the cleaner. The pose and caption are the
item's own (annotated on the high-quality photo). The joint UNet from phase 1 is frozen; the ControlNet
starts as a copy of its encoder with zero convolutions (`Stage1ControlNet.from_unet`), or from a
DiffBody ControlNet file (`--init_controlnet`). Defaults follow the paper (section 4.2): Adam, lr 1e-5,
100k steps, batch 64 = 8 per GPU on 8 GPUs.

Writes `output_dir/diffbody_stage1_controlnet.safetensors` (and one in each checkpoint folder) in the
layout the "DiffBody Stage 1 Loader" node reads from ComfyUI/models/diffbody.
"""

from __future__ import annotations

import argparse
import os

import torch

from ..models.stage1_weights import CONTROLNET_FILENAME
from . import stage1_common as common
from .loop import add_training_arguments, config_from_args
from .shared import Cleaner, degraded_and_cleaned, fix_batch_randomness, phase_main, run_phase

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m comfyui_diffbody.training.train_stage1_controlnet",
                                     description="DiffBody training phase 2: the stage-1 ControlNet (eq. 2).")
    common.add_stage1_arguments(parser)
    parser.add_argument("--unet", required=True, help="the phase-1 joint UNet (DiffBody stage-1 UNet file), frozen")
    parser.add_argument("--init_controlnet", default=None,
                        help="start from this DiffBody stage-1 ControlNet file instead of a copy of the UNet's encoder")
    parser.add_argument("--swinir", default=None,
                        help="DiffBIR's SwinIR cleaner (general_swinir_v1.ckpt / realesrgan_s4_swinir_100k.pth); "
                             "without it the ControlNet sees the degraded image itself")
    parser.add_argument("--degradation_scale", type=int, default=4,
                        help="Real-ESRGAN's down-scaling factor of the synthetic degradation")
    add_training_arguments(parser, learning_rate=common.PAPER_LEARNING_RATE,
                           train_batch_size=common.PAPER_BATCH_PER_GPU, max_steps=common.PAPER_STEPS)
    return parser


def save_controlnet(model, folder: str) -> None:
    from ..models.stage1_weights import save_stage1_controlnet

    save_stage1_controlnet(model, os.path.join(folder, CONTROLNET_FILENAME))


def train(args: argparse.Namespace, accelerator=None) -> list[float]:
    """Run phase 2 with parsed arguments; returns this process's per-step losses."""
    from ..models.stage1_controlnet import Stage1ControlNet
    from ..models.stage1_weights import load_stage1_controlnet, load_stage1_unet
    from .dataset import ManifestDataset

    config = config_from_args(args)
    dataset = ManifestDataset(args.data_root, fields=("image", "pose", "depth", "normal", "caption"))
    components = common.load_frozen_sd21(args.pretrained_sd21)
    unet = load_stage1_unet(args.unet, dtype=torch.float32)
    if args.init_controlnet:
        controlnet = load_stage1_controlnet(args.init_controlnet, dtype=torch.float32)
        if controlnet.config != unet.config:
            raise SystemExit(f"{args.init_controlnet} was made for a UNet of other sizes than {args.unet}")
    else:
        controlnet = Stage1ControlNet.from_unet(unet)
    controlnet.requires_grad_(True)
    cleaner = Cleaner(args.swinir)
    schedule = common.training_schedule()
    previews = common.validation_items(dataset, args.validation_count)
    preview_ir: list[torch.Tensor] = []  # I_ir of the preview items, made once, on the training device

    def compute_loss(batch):
        if args.fixed_noise:
            fix_batch_randomness(batch, args.seed)
        inputs = common.prepare_inputs(batch, components, schedule, args.caption_dropout)
        _, image_ir = degraded_and_cleaned(batch["image"], batch["generator"], cleaner, args.degradation_scale)
        image_latent = common.encode(components, image_ir)
        control = batch["model"](inputs.noisy, inputs.pose_latent, inputs.timesteps, inputs.context, image_latent)
        prediction = unet(inputs.noisy, inputs.pose_latent, inputs.timesteps, inputs.context, control=control)
        return common.joint_loss(prediction, inputs.noise)

    def validate(model, step: int, folder: str) -> None:
        if not preview_ir:
            device, generator = next(model.parameters()).device, torch.Generator().manual_seed(args.seed)
            for item in previews:
                _, ir = degraded_and_cleaned(item["image"][None].to(device), generator, cleaner, args.degradation_scale)
                preview_ir.append(ir[0].cpu())
        common.sample_previews(unet, model, components, previews, preview_ir, folder, step, args)

    frozen = [*common.frozen_modules(components), unet]
    return run_phase(config, args, trainable=controlnet, dataset=dataset, compute_loss=compute_loss, frozen=frozen,
                     cleaner=cleaner, save_weights=save_controlnet, validate=validate if previews else None,
                     accelerator=accelerator)


def main(argv: list[str] | None = None) -> int:
    return phase_main(build_parser, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
