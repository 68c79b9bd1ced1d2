"""Training phase 3: DiffBody's stage-2 multi-prior ControlNet on SDXL, SDXL frozen (paper eq. 3).

    python -m comfyui_diffbody.training.train_stage2_controlnet --data_root DATA \
        --pretrained_sdxl stable-diffusion-xl-base-1.0 --swinir general_swinir_v1.ckpt \
        --output_dir runs/stage2_controlnet
    accelerate launch --multi_gpu --num_processes 8 -m comfyui_diffbody.training.train_stage2_controlnet ...

The ControlNet's encoder starts as a copy of SDXL's (`multiprior_from_sdxl_unet`: the folder's UNet, or
the `--sdxl_unet` single file's), its four prior extractors freshly initialised and its fusion conv and
zero convs zero; or from a DiffBody stage-2 ControlNet file (`--init_controlnet`, e.g. to continue).
Each step feeds it c_g from I_ir = SwinIR(I_LQ), I_pose, I_depth and I_normal with the strengths
`--prior_strengths` (see training/stage2_common.py for how each input is made). Every ControlNet
parameter is trained. Defaults follow the paper (section 4.2): Adam, lr 1e-5, 100k steps, batch 32 with
gradient accumulation 2 on 8 GPUs = 4 per GPU per micro-batch, 2 micro-batches per step.

Writes `output_dir/diffbody_stage2_controlnet.safetensors` (and one in each checkpoint folder) in the
layout the "DiffBody Multi-Prior ControlNet Loader" node reads from ComfyUI/models/diffbody.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from ..models.multiprior_controlnet import MultiPriorControlNet
from ..models.stage2_weights import CONTROLNET_FILENAME
from . import stage2_common as common
from .loop import add_training_arguments, config_from_args
from .shared import Cleaner, fix_batch_randomness, phase_main, run_phase

PAPER_LEARNING_RATE = 1e-5  # section 4.2
PAPER_BATCH_PER_GPU = 4  # "a batch size of 32 and gradient accumulation of 2" on 8 GPUs
PAPER_ACCUMULATION = 2
PAPER_STEPS = 100_000


class ControlNetWithPriors(nn.Module):
    """The ControlNet with its prior embedding in one forward, so that DistributedDataParallel sees every
    trained parameter used inside the call it wraps. The weights live in `.controlnet`."""

    def __init__(self, controlnet: MultiPriorControlNet):
        super().__init__()
        self.controlnet = controlnet

    def forward(self, sample, timestep, context, y, priors: dict, strengths: dict):
        embedding = self.controlnet.embed_priors(priors, strengths)
        return self.controlnet(sample, timestep, context, y, embedding)

    def enable_gradient_checkpointing(self) -> None:
        self.controlnet.enable_gradient_checkpointing()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m comfyui_diffbody.training.train_stage2_controlnet",
                                     description="DiffBody training phase 3: the stage-2 multi-prior ControlNet "
                                                 "(eq. 3).")
    common.add_stage2_arguments(parser)
    parser.add_argument("--init_controlnet", default=None,
                        help="start from this DiffBody stage-2 ControlNet file instead of a copy of SDXL's encoder")
    add_training_arguments(parser, learning_rate=PAPER_LEARNING_RATE, train_batch_size=PAPER_BATCH_PER_GPU,
                           max_steps=PAPER_STEPS)
    parser.set_defaults(gradient_accumulation_steps=PAPER_ACCUMULATION)
    return parser


def save_controlnet(model: ControlNetWithPriors, folder: str) -> None:
    from ..models.stage2_weights import save_multiprior

    save_multiprior(model.controlnet, os.path.join(folder, CONTROLNET_FILENAME))


def initial_controlnet(args: argparse.Namespace, sdxl: common.FrozenSDXL) -> MultiPriorControlNet:
    from ..models.multiprior_controlnet import MultiPriorControlNetConfig
    from ..models.stage2_weights import load_multiprior, multiprior_from_sdxl_unet

    if args.init_controlnet:
        controlnet = load_multiprior(args.init_controlnet, dtype=torch.float32)
        if not controlnet.config.encoder_matches(MultiPriorControlNetConfig.from_unet_config(sdxl.unet.config)):
            raise SystemExit(f"{args.init_controlnet} was made for an SDXL UNet of other sizes than "
                             f"{args.sdxl_unet or args.pretrained_sdxl}")
        return controlnet
    source, unet_config = common.controlnet_source(args)
    with torch.random.fork_rng(devices=[]):  # the prior extractors' initialisation depends on --seed only
        torch.manual_seed(args.seed)
        return multiprior_from_sdxl_unet(source, unet_config=unet_config, dtype=torch.float32)


def train(args: argparse.Namespace, accelerator=None) -> list[float]:
    """Run phase 3 with parsed arguments; returns this process's per-step losses."""
    from ..pipelines.stage2 import Stage2Pipeline
    from .dataset import ManifestDataset

    config = config_from_args(args)
    strengths = common.prior_strengths(args)
    dataset = ManifestDataset(args.data_root, fields=("image", "pose", "depth", "normal", "caption"))
    sdxl = common.load_frozen_sdxl(args.pretrained_sdxl, args.sdxl_unet)
    model = ControlNetWithPriors(initial_controlnet(args, sdxl).train().requires_grad_(True))
    cleaner = Cleaner(args.swinir)
    schedule = common.training_schedule()
    previews = common.Previews(dataset, args, cleaner)

    def compute_loss(batch):
        if args.fixed_noise:
            fix_batch_randomness(batch, args.seed)
        inputs = common.prepare_inputs(batch, sdxl, schedule, cleaner, args.caption_dropout, args.degradation_scale)
        residuals = batch["model"](inputs.noisy, inputs.timesteps, inputs.context, inputs.added_vector, inputs.priors,
                                   strengths)
        return common.noise_loss(common.unet_prediction(sdxl.unet, inputs, residuals), inputs.noise)

    def validate(wrapper: ControlNetWithPriors, step: int, folder: str) -> None:
        pipeline = Stage2Pipeline(sdxl.unet, sdxl.vae.vae, sdxl.text_encoders, controlnet=wrapper.controlnet.eval())
        common.sample_previews(pipeline, previews, strengths, folder, step, args)

    return run_phase(config, args, trainable=model, dataset=dataset, compute_loss=compute_loss, frozen=sdxl.modules,
                     frozen_fp32=[sdxl.vae_module], cleaner=cleaner, save_weights=save_controlnet,
                     validate=validate if previews else None, accelerator=accelerator)


def main(argv: list[str] | None = None) -> int:
    return phase_main(build_parser, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
