"""What the training phases share beyond one stage: the frozen SwinIR cleaner and the degraded/cleaned
inputs made with it (phases 2, 3 and 4), per-item randomness for --fixed_noise, and how a phase runs
the loop and its command line.
"""

from __future__ import annotations

import argparse
import hashlib
from typing import Any, Callable, Sequence

import torch

from .loop import TrainConfig, micro_batch_seed, run_training

SWINIR_CHUNK = 4  # images per SwinIR call (its attention memory grows fast with the batch)
SWINIR_MULTIPLE = 64


class Cleaner:
    """I_LQ -> I_ir: DiffBIR's SwinIR, frozen, or nothing (the degraded image is used as it is)."""

    def __init__(self, path: str | None):
        self.descriptor = None
        if path:
            from ..models.swinir import load_swinir

            self.descriptor = load_swinir(path)

    @property
    def module(self) -> torch.nn.Module | None:
        return self.descriptor.model if self.descriptor is not None else None

    @torch.no_grad()
    def __call__(self, lq: torch.Tensor) -> torch.Tensor:
        if self.descriptor is None:
            return lq
        if lq.shape[-2] % SWINIR_MULTIPLE or lq.shape[-1] % SWINIR_MULTIPLE:
            raise SystemExit(f"SwinIR needs sizes that are multiples of {SWINIR_MULTIPLE} px; the training images "
                             f"are {lq.shape[-1]}x{lq.shape[-2]} (use the paper's buckets)")
        # bf16 is fine for SwinIR, fp16 overflows: under an fp16 autocast it runs in float32.
        kind = lq.device.type
        bf16 = torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.bfloat16
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
            parts = [self.module(lq[i:i + SWINIR_CHUNK]) for i in range(0, lq.shape[0], SWINIR_CHUNK)]
        return torch.cat(parts).float().clamp(0, 1)


def degraded_and_cleaned(images: torch.Tensor, generator: torch.Generator | list[torch.Generator], cleaner: Cleaner,
                         scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(I_LQ, I_ir) for a batch of photos, drawn from one generator or one per image; the degradation runs
    outside autocast (it is image processing)."""
    from .dataset import make_degraded

    with torch.autocast(images.device.type, enabled=False):
        if isinstance(generator, list):
            lq = torch.cat([make_degraded(images[i:i + 1], g, scale=scale) for i, g in enumerate(generator)])
        else:
            lq = make_degraded(images, generator, scale=scale)
    return lq, cleaner(lq)


def item_seed(seed: int, item_id: str, stream: int = 0) -> int:
    """A 63-bit seed that depends only on (seed, item id, stream); streams keep two uses of one item apart
    (0: the training steps' per-item draws, 1: the stage-1 sampling noise of training/prepare_ires.py)."""
    digest = int.from_bytes(hashlib.sha256(item_id.encode("utf-8")).digest()[:7], "big")
    return micro_batch_seed(seed, digest, stream)


def item_generator(seed: int, item_id: str, device: torch.device) -> torch.Generator:
    """A generator that depends only on (seed, item id): the same draws every time the item is visited."""
    return torch.Generator(device=device).manual_seed(item_seed(seed, item_id))


def fix_batch_randomness(batch: dict, seed: int) -> None:
    """For --fixed_noise: replace the step's generator by per-item ones (see item_generator)."""
    device = batch["generator"].device
    batch["generator"] = [item_generator(seed, item_id, device) for item_id in batch["id"]]


def run_phase(config: TrainConfig, args: argparse.Namespace, *, trainable: torch.nn.Module, dataset,
              compute_loss: Callable[[dict], Any], save_weights: Callable[[torch.nn.Module, str], None],
              validate: Callable[[torch.nn.Module, int, str], None] | None, accelerator=None,
              frozen: Sequence[torch.nn.Module] = (), frozen_fp32: Sequence[torch.nn.Module] = (),
              cleaner: Cleaner | None = None) -> list[float]:
    """run_training as every phase calls it: the dataset's items collated by collate_items, the cleaner's
    network (if any) frozen in float32 after `frozen_fp32`, and the phase's arguments stored as hparams."""
    from .dataset import collate_items

    cleaner_modules = [cleaner.module] if cleaner is not None and cleaner.module else []
    return run_training(config, trainable=trainable, dataset=dataset, collate_fn=collate_items,
                        compute_loss=compute_loss, frozen=frozen, frozen_fp32=[*frozen_fp32, *cleaner_modules],
                        save_weights=save_weights, validate=validate, accelerator=accelerator,
                        hparams=dict(vars(args)))


def phase_main(build_parser: Callable[[], argparse.ArgumentParser], train: Callable, argv: list[str] | None) -> int:
    """A phase's command line: parse, train, exit 0 (errors exit through SystemExit)."""
    train(build_parser().parse_args(argv))
    return 0
