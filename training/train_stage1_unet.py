"""Training phase 1: DiffBody's stage-1 joint UNet (paper eq. 1).

    python -m comfyui_diffbody.training.train_stage1_unet --data_root DATA --pretrained_sd21 SD21_FOLDER \
        --output_dir runs/stage1_unet [--init humansd-v1.safetensors --init_from humansd]
    accelerate launch --multi_gpu --num_processes 8 -m comfyui_diffbody.training.train_stage1_unet ...

The UNet starts from SD 2.1-base (`--init_from sd21`: the `--pretrained_sd21` folder's UNet by default,
or a single file given with `--init`), from HumanSD (`--init_from humansd --init humansd-v1.ckpt`; the
paper's choice: "initialized using the HumanSD framework"), or from a DiffBody stage-1 UNet file
(`--init_from diffbody`, e.g. to continue from weights written by an earlier run). Every parameter
of the joint UNet is trained. Defaults follow the paper (section 4.2): Adam, lr 1e-5, 100k steps,
batch 64 = 8 per GPU on 8 GPUs.

Writes `output_dir/diffbody_stage1_unet.safetensors` (and one in each checkpoint folder), in the
layout the "DiffBody Stage 1 Loader" node reads from ComfyUI/models/diffbody.
"""

from __future__ import annotations

import argparse
import os

from ..models.stage1_weights import UNET_FILENAME
from . import stage1_common as common
from .loop import add_training_arguments, config_from_args
from .shared import fix_batch_randomness, phase_main, run_phase

INIT_KINDS = ("sd21", "humansd", "diffbody")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m comfyui_diffbody.training.train_stage1_unet",
                                     description="DiffBody training phase 1: the stage-1 joint UNet (eq. 1).")
    common.add_stage1_arguments(parser)
    parser.add_argument("--init_from", choices=INIT_KINDS, default="sd21",
                        help="what --init is: SD 2.1-base, HumanSD, or a DiffBody stage-1 UNet file")
    parser.add_argument("--init", default=None,
                        help="initial weights (default for sd21: the --pretrained_sd21 folder's UNet)")
    add_training_arguments(parser, learning_rate=common.PAPER_LEARNING_RATE,
                           train_batch_size=common.PAPER_BATCH_PER_GPU, max_steps=common.PAPER_STEPS)
    return parser


def folder_unet_config(folder: str):
    """The JointUNetConfig of the SD folder's unet/config.json, or None when it has none. A single-file
    --init is read with these sizes (SD 2.1-base's for the real folder)."""
    import json

    from ..models.joint_unet import JointUNetConfig

    path = os.path.join(folder, "unet", "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return JointUNetConfig.from_diffusers_unet_config(json.load(f))


def initial_unet(args: argparse.Namespace):
    from ..models.stage1_weights import joint_unet_from_humansd, joint_unet_from_sd21, load_stage1_unet

    if args.init_from == "sd21" and args.init is None:
        return joint_unet_from_sd21(args.pretrained_sd21)
    if args.init is None:
        raise SystemExit(f"--init_from {args.init_from} needs --init PATH")
    if args.init_from == "diffbody":
        return load_stage1_unet(args.init, dtype=None)
    config = None if os.path.isdir(args.init) else folder_unet_config(args.pretrained_sd21)
    loader = joint_unet_from_sd21 if args.init_from == "sd21" else joint_unet_from_humansd
    return loader(args.init, config)


def save_unet(model, folder: str) -> None:
    from ..models.stage1_weights import save_stage1_unet

    save_stage1_unet(model, os.path.join(folder, UNET_FILENAME))


def train(args: argparse.Namespace, accelerator=None) -> list[float]:
    """Run phase 1 with parsed arguments; returns this process's per-step losses."""
    from .dataset import ManifestDataset

    config = config_from_args(args)
    dataset = ManifestDataset(args.data_root, fields=("image", "pose", "depth", "normal", "caption"))
    components = common.load_frozen_sd21(args.pretrained_sd21)
    unet = initial_unet(args).float()
    if unet.config.cross_attention_dim != components.text_encoder.context_dim:
        raise SystemExit(f"the UNet's context width ({unet.config.cross_attention_dim}) does not match the text "
                         f"encoder of {args.pretrained_sd21} ({components.text_encoder.context_dim})")
    unet.requires_grad_(True)
    schedule = common.training_schedule()
    previews = common.validation_items(dataset, args.validation_count)

    def compute_loss(batch):
        if args.fixed_noise:
            fix_batch_randomness(batch, args.seed)
        inputs = common.prepare_inputs(batch, components, schedule, args.caption_dropout)
        prediction = batch["model"](inputs.noisy, inputs.pose_latent, inputs.timesteps, inputs.context)
        return common.joint_loss(prediction, inputs.noise)

    def validate(model, step: int, folder: str) -> None:
        # Without the ControlNet the sampler ignores I_ir; the pose stands in the preview's first column.
        common.sample_previews(model, None, components, previews, [item["pose"] for item in previews], folder,
                               step, args)

    return run_phase(config, args, trainable=unet, dataset=dataset, compute_loss=compute_loss,
                     frozen=common.frozen_modules(components), save_weights=save_unet,
                     validate=validate if previews else None, accelerator=accelerator)


def main(argv: list[str] | None = None) -> int:
    return phase_main(build_parser, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
