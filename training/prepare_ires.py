"""The I_res step: `python -m comfyui_diffbody.training.prepare_ires DATA_ROOT --pretrained_sd21 SD21_FOLDER \
    --unet diffbody_stage1_unet.safetensors --controlnet diffbody_stage1_controlnet.safetensors --swinir SWINIR`.

Phase 4 trains the colour adapter on I_res, stage 1's restoration (paper section 3.3, after eq. 4), as
inference feeds it. This step runs a trained stage 1 (phases 1 and 2) over a folder written by
`training/prepare_data.py` and stores each item's I_res beside its other files::

    DATA_ROOT/ires/<id>.png     8-bit RGB, the item's bucket size

Per item, as inference makes it: I_LQ = Real-ESRGAN's random second-order degradation of the photo
(training/degradations.py, x`--degradation_scale` down and back), I_ir = SwinIR(I_LQ) (`--swinir`; without
it I_LQ itself, as the phases allow), then stage 1 (pipelines/stage1.py) from I_ir, the item's pose image and
its caption p, at the item's own (bucket) size. The degradation and the stage-1 noise are seeded by
(`--seed`, item id) (training/shared.py item_seed), so a rerun writes the same file. A fast scheduler is
the default (DPM-Solver++ 2M, 25 steps; `--scheduler ddpm --steps 200` is the paper's inference sampler).

Each file is written to a temporary name and renamed (training/prepare_data.py atomic_write); a rerun skips
items whose file is a complete PNG of the right size and redoes the others. `--num-shards N --shard-index i`
splits the items between machines with prepare_data's `shard_of`, keyed by the item id (unique in a dataset,
and derived from the source path by prepare_data, so each item belongs to exactly one shard). `--tiny` runs
on generated tiny random weights as a plumbing check (the images are noise).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from .prepare_data import save_png, shard_of

DEFAULT_SCHEDULER = "dpmpp_2m"
SAMPLING_STREAM = 1  # item_seed stream of the stage-1 noise (stream 0: the degradation)


def build_parser() -> argparse.ArgumentParser:
    from ..pipelines.stage1 import DEFAULT_CFG, DEFAULT_STEPS, SCHEDULERS

    parser = argparse.ArgumentParser(
        prog="python -m comfyui_diffbody.training.prepare_ires",
        description="Store stage 1's restoration I_res of every item of a DiffBody training folder "
                    "(ires/<id>.png), for phase 4; resumable and shardable.")
    parser.add_argument("data_root", type=Path, help="a folder written by training/prepare_data.py")
    parser.add_argument("--pretrained_sd21", default=None,
                        help="Stable Diffusion 2.1-base diffusers folder (its VAE and text encoder), as phases 1-2")
    parser.add_argument("--unet", default=None, help="the trained joint UNet (diffbody_stage1_unet.safetensors)")
    parser.add_argument("--controlnet", default=None,
                        help="the trained stage-1 ControlNet (diffbody_stage1_controlnet.safetensors)")
    parser.add_argument("--swinir", default=None,
                        help="DiffBIR's SwinIR cleaner making I_ir from the degraded photo (as in phases 2-4); "
                             "without it stage 1 sees the degraded photo itself")
    parser.add_argument("--degradation_scale", type=int, default=4,
                        help="Real-ESRGAN's down-scaling factor of the synthetic degradation")
    parser.add_argument("--scheduler", default=DEFAULT_SCHEDULER, choices=SCHEDULERS)
    parser.add_argument("--steps", type=int, default=None,
                        help=f"sampling steps (default: {DEFAULT_STEPS[DEFAULT_SCHEDULER]} for {DEFAULT_SCHEDULER}, "
                             f"the scheduler's usual count otherwise)")
    parser.add_argument("--cfg", type=float, default=DEFAULT_CFG, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0, help="with the item id, seeds its degradation and noise")
    parser.add_argument("--num-shards", type=int, default=1, help="split the items into this many shards")
    parser.add_argument("--shard-index", type=int, default=0, help="which shard this run restores (0-based)")
    parser.add_argument("--limit", type=int, default=None, help="restore only the first N items of the shard")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                        help="the stage-1 networks' dtype (auto: float16 on CUDA, float32 elsewhere)")
    parser.add_argument("--tiny", action="store_true",
                        help="plumbing check: generate tiny random stage-1, SD 2.1 and SwinIR weights and use them")
    return parser


def check_args(args: argparse.Namespace) -> None:
    if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
        raise SystemExit(f"error: --shard-index must be from 0 to {args.num_shards - 1}, got {args.shard_index}")
    if args.limit is not None and args.limit < 0:
        raise SystemExit(f"error: --limit must not be negative, got {args.limit}")
    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise SystemExit(f"error: --steps must be from 1 to 1000, got {args.steps}")
    if not args.tiny:
        missing = [f"--{name}" for name in ("pretrained_sd21", "unet", "controlnet") if not getattr(args, name)]
        if missing:
            raise SystemExit(f"error: {', '.join(missing)} required (or --tiny for a plumbing check)")


def is_complete(path: Path, width: int, height: int) -> bool:
    """Whether `path` is a whole PNG of width x height (a file cut off or of another size is redone)."""
    from PIL import Image

    if not path.is_file():
        return False
    try:
        with Image.open(path) as image:
            image.load()
            return image.format == "PNG" and image.size == (width, height)
    except (OSError, ValueError):
        return False


def shard_indices(dataset, num_shards: int, shard_index: int) -> list[int]:
    """Dataset indices of this shard's items, in manifest order."""
    return [i for i, item in enumerate(dataset.items) if shard_of(str(item["id"]), num_shards) == shard_index]


class Restorer:
    """Stage 1 and the cleaner, loaded once; `restore(item)` gives one item's I_res (3, H, W) in 0..1."""

    def __init__(self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
        from ..models.sd21_components import load_sd21_components
        from ..models.stage1_weights import load_stage1_controlnet, load_stage1_unet
        from ..pipelines.stage1 import Stage1Pipeline
        from .shared import Cleaner

        components = load_sd21_components(args.pretrained_sd21, device=device, dtype=dtype)
        unet = load_stage1_unet(args.unet, device=device, dtype=dtype)
        controlnet = load_stage1_controlnet(args.controlnet, device=device, dtype=dtype)
        if controlnet.config != unet.config:
            raise SystemExit(f"{args.controlnet} was made for a UNet of other sizes than {args.unet}")
        self.pipeline = Stage1Pipeline(unet, controlnet, components.vae, components.text_encoder)
        self.cleaner = Cleaner(args.swinir)
        if self.cleaner.module is not None:
            self.cleaner.module.to(device).float()
        self.args, self.device = args, device

    @torch.no_grad()
    def restore(self, item: dict) -> torch.Tensor:
        from .shared import degraded_and_cleaned, item_generator, item_seed

        args = self.args
        generator = item_generator(args.seed, item["id"], torch.device("cpu"))
        _, image_ir = degraded_and_cleaned(item["image"][None].to(self.device), generator, self.cleaner,
                                           args.degradation_scale)
        seed = item_seed(args.seed, item["id"], SAMPLING_STREAM)
        out = self.pipeline(image_ir.cpu(), item["pose"][None], [item["caption"]], steps=args.steps,
                            scheduler=args.scheduler, cfg=args.cfg, seed=seed, size_mode="native")
        return out.rgb[0]


def restore_all(dataset, indices: list[int], restorer: Restorer) -> int:
    from tqdm import tqdm

    from ..pipelines.image import chw_to_uint8

    for index in tqdm(indices, desc="stage 1 (I_res)", unit="image"):
        item = dataset[index]
        save_png(Path(dataset.data_root) / dataset.relative_path(index, "ires"), chw_to_uint8(restorer.restore(item)))
    return len(indices)


def main(argv: list[str] | None = None) -> int:
    from ..models.devices import pick_device, pick_dtype
    from .dataset import ManifestDataset

    args = build_parser().parse_args(argv)
    check_args(args)
    dataset = ManifestDataset(str(args.data_root), fields=("image", "pose", "caption"))
    shard = shard_indices(dataset, args.num_shards, args.shard_index)
    if args.limit is not None:
        shard = shard[:args.limit]
    pending = [i for i in shard if not is_complete(args.data_root / dataset.relative_path(i, "ires"),
                                                   dataset.items[i]["width"], dataset.items[i]["height"])]
    label = " (plumbing check on tiny random weights: the images are noise)" if args.tiny else ""
    print(f"{len(shard)} item(s) in shard {args.shard_index} of {args.num_shards}, {len(shard) - len(pending)} "
          f"already done, {len(pending)} to restore{label}.")
    if not pending:
        return 0
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory(prefix="diffbody-tiny-") as tiny_dir:
        if args.tiny:
            _tiny_models(args, tiny_dir)
        restorer = Restorer(args, device, pick_dtype(args.dtype, device))
        written = restore_all(dataset, pending, restorer)
    print(f"Wrote I_res of {written} item(s){label} into {args.data_root / 'ires'}.")
    return 0


def _tiny_models(args: argparse.Namespace, folder: str) -> None:
    """Fill the model arguments with tiny random weights written into `folder` (build_models_dir's seeds)."""
    import os

    from ..testing.tiny.sd21_components import write_tiny_sd21_components
    from ..testing.tiny.stage1 import write_tiny_sd21_diffusers, write_tiny_stage1
    from ..testing.tiny.swinir import write_tiny_swinir

    args.pretrained_sd21 = os.path.join(folder, "tiny-sd21")
    write_tiny_sd21_diffusers(args.pretrained_sd21)
    write_tiny_sd21_components(args.pretrained_sd21)
    args.unet, args.controlnet = write_tiny_stage1(os.path.join(folder, "unet.safetensors"),
                                                   os.path.join(folder, "controlnet.safetensors"))
    args.swinir = write_tiny_swinir(os.path.join(folder, "general_swinir_v1.ckpt"))


if __name__ == "__main__":
    raise SystemExit(main())
