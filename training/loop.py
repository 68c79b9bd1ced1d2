"""The training loop every DiffBody phase shares, on Hugging Face accelerate.

A phase supplies the network to train, its dataset, and a `compute_loss(batch)`; `run_training` does
the rest the same way for all four phases (paper section 4.2):

- Adam (the paper's optimiser; no weight decay), optional linear warm-up, gradient accumulation,
  gradient clipping, mixed precision (`accelerator.autocast` around `compute_loss`, fp32 master
  weights), gradient checkpointing (every module with `enable_gradient_checkpointing`, frozen ones
  too: the frozen UNet of a ControlNet phase holds activations the ControlNet's gradient goes through);
- frozen modules are moved to the device in the mixed-precision dtype with `requires_grad` off
  (`frozen_fp32` modules keep float32: SwinIR overflows in fp16);
- bucketed batches (`training.dataset.BucketBatchSampler`): every batch holds items of one size; every
  process reads its own batches, the same number per epoch, so the processes stay in step;
- a checkpoint every `checkpointing_steps` in `output_dir/checkpoint-<step>`: `accelerator.save_state`
  (weights, optimiser, LR schedule, every process's RNG states, fp16 grad scaler), `training_state.json`
  (step and data position) and the network in the pack's layout (`save_weights`), so any checkpoint
  also loads in ComfyUI. Resuming (`resume_from_checkpoint`: a path or "latest") continues the
  same loss curve: the randomness of a step does not depend on what ran before in this process (see
  below), and the data continues from the next unread batch;
- logs: `output_dir/logs/train_log.jsonl` (one JSON object per logged step, main process) and the
  accelerate trackers named in `report_to` (tensorboard, wandb, ...);
- validation: `validate(model, step, folder)` on the main process every `validation_steps` and at the end;
- at the end, `save_weights(model, output_dir)` on the main process.

What `compute_loss(batch)` finds in the batch besides the collated data:
- `batch["model"]`: the network to call for the forward pass: the prepared one (wrapped in
  DistributedDataParallel when several processes run). Calling the module passed as `trainable`
  directly would skip DDP's gradient synchronisation.
- `batch["generator"]`: a torch.Generator on the training device seeded from (seed, micro-batch index,
  process index). Draw the step's noise, timesteps and degradations from it: a step then gets the
  same draws whether the run was resumed or not.
- `batch["global_step"]`: the optimiser step the micro-batch belongs to (0-based).

Launching: `accelerate launch [--multi_gpu --num_processes N] -m comfyui_diffbody.training.<phase> ...`
(`accelerate config` once per machine, or flags); plain `python -m ...` runs one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch

from ..models.errors import DiffBodyError, MissingDependency

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger(__name__)

MIXED_PRECISION = ("no", "fp16", "bf16")
CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.json"
LOG_FILE = "train_log.jsonl"


class TrainingError(DiffBodyError):
    """A training setting or input that cannot work, or a checkpoint that cannot be resumed."""


def require_accelerate(what: str) -> None:
    """Raise MissingDependency naming the extra when Hugging Face accelerate is missing: ComfyUI does not bring
    it, so the pack's requirements leave it to training and the command line's `restore` (`what` needs it)."""
    try:
        importlib.import_module("accelerate")
    except ImportError as e:
        raise MissingDependency(
            f"DiffBody: {what} needs Hugging Face accelerate, which the ComfyUI nodes do not need and the pack's "
            "requirements.txt leaves out: `pip install 'accelerate>=0.34'` (the pack's extra `training` in "
            f"pyproject.toml). (import error: {e})") from e


@dataclass
class TrainConfig:
    """Settings every training phase shares. `train_batch_size` is per process and per micro-batch: the
    batch of one optimiser step is train_batch_size x processes x gradient_accumulation_steps."""

    output_dir: str
    max_steps: int
    learning_rate: float
    train_batch_size: int
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16" ("no": accelerate launch's setting, if any)
    gradient_checkpointing: bool = False
    checkpointing_steps: int = 500
    validation_steps: int = 500
    log_every: int = 10
    seed: int = 0
    resume_from_checkpoint: str | None = None  # a checkpoint folder, or "latest" in output_dir
    dataloader_num_workers: int = 0
    max_grad_norm: float = 1.0  # 0 turns clipping off
    # Additions beyond the shared contract (all optional).
    checkpoints_total_limit: int | None = None  # keep only the newest N checkpoint folders
    lr_warmup_steps: int = 0  # linear warm-up from 0, then constant (the paper states no schedule)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    report_to: str | None = None  # accelerate trackers: "tensorboard", "wandb", "all", ...
    tracker_project_name: str = "diffbody"

    def __post_init__(self):
        if self.mixed_precision not in MIXED_PRECISION:
            raise TrainingError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        for name in ("max_steps", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps",
                     "validation_steps", "log_every"):
            if int(getattr(self, name)) < 1:
                raise TrainingError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise TrainingError(f"learning_rate must be positive, got {self.learning_rate}")

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype frozen modules are kept in (unless `accelerate launch --mixed_precision` decides:
        see make_accelerator)."""
        return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.mixed_precision]


# ---- command line --------------------------------------------------------------------------------------

_HELP = {
    "output_dir": "folder for checkpoints, logs, validation images and the final weights",
    "max_steps": "optimiser steps to train for (in total, counting steps before a resume)",
    "learning_rate": "Adam learning rate",
    "train_batch_size": "images per process per micro-batch",
    "gradient_accumulation_steps": "micro-batches per optimiser step",
    "mixed_precision": "autocast dtype; weights stay float32, frozen networks are stored in it",
    "gradient_checkpointing": "recompute activations in the backward pass (less memory, ~30%% slower)",
    "checkpointing_steps": "save a resumable checkpoint every N steps",
    "validation_steps": "write validation images every N steps",
    "log_every": "log the loss every N steps",
    "seed": "seed of the data order, noise, timesteps and degradations",
    "resume_from_checkpoint": "a checkpoint folder to resume from, or 'latest' (the newest in output_dir)",
    "dataloader_num_workers": "processes loading images",
    "max_grad_norm": "clip the gradient norm to this (0: no clipping)",
    "checkpoints_total_limit": "keep only the newest N checkpoints",
    "lr_warmup_steps": "linear learning-rate warm-up steps",
    "report_to": "accelerate trackers to log to (tensorboard, wandb, all)",
}


# Neither the paper nor HumanSD states a rate; the samplers' classifier-free guidance needs some.
DEFAULT_CAPTION_DROPOUT = 0.1


def add_phase_arguments(parser: argparse.ArgumentParser, *, validation_schedulers: Sequence[str],
                        validation_scheduler: str, validation_cfg: float) -> None:
    """The options every phase has besides TrainConfig's: the data folder, caption dropout, the
    overfitting switch, and the validation previews (each stage's sampler has its own schedulers)."""
    parser.add_argument("--data_root", required=True,
                        help="training folder (python -m comfyui_diffbody.training.prepare_data writes it)")
    parser.add_argument("--caption_dropout", type=float, default=DEFAULT_CAPTION_DROPOUT,
                        help="probability of training on the empty prompt (for classifier-free guidance)")
    parser.add_argument("--fixed_noise", action="store_true",
                        help="debugging: every item always gets the same noise, timestep, dropout and degradation "
                             "(seeded by its id), to check that the pipeline can overfit a few images; never for "
                             "real training")
    parser.add_argument("--validation_count", type=int, default=2,
                        help="dataset items previewed at each validation (0: none)")
    parser.add_argument("--validation_sampler_steps", type=int, default=20)
    parser.add_argument("--validation_scheduler", choices=tuple(validation_schedulers), default=validation_scheduler)
    parser.add_argument("--validation_cfg", type=float, default=validation_cfg)


def add_training_arguments(parser: argparse.ArgumentParser, *, learning_rate: float, train_batch_size: int,
                           max_steps: int) -> None:
    """Add every TrainConfig field to `parser` as `--<field>` with the phase's defaults for the three given."""
    phase_defaults = {"learning_rate": learning_rate, "train_batch_size": train_batch_size, "max_steps": max_steps}
    group = parser.add_argument_group("training")
    for field in dataclasses.fields(TrainConfig):
        flag = f"--{field.name}"
        help_text = _HELP.get(field.name)
        if field.name == "output_dir":
            group.add_argument(flag, required=True, help=help_text)
            continue
        default = phase_defaults.get(field.name, field.default)
        if field.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif field.name == "mixed_precision":
            group.add_argument(flag, choices=MIXED_PRECISION, default=default, help=help_text)
        else:
            group.add_argument(flag, type=_arg_type(field), default=default, help=help_text)


def _arg_type(field: dataclasses.Field) -> Callable[[str], Any]:
    kind = str(field.type)
    if kind.startswith("int"):
        return int
    if kind.startswith("float"):
        return float
    return str


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig held by parsed arguments (the phase's own arguments are ignored)."""
    values = vars(args)
    return TrainConfig(**{f.name: values[f.name] for f in dataclasses.fields(TrainConfig) if f.name in values})


# ---- checkpoints ---------------------------------------------------------------------------------------

def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint folder in output_dir, oldest first."""
    found = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            match = re.fullmatch(re.escape(CHECKPOINT_PREFIX) + r"(\d+)", name)
            path = os.path.join(output_dir, name)
            if match and os.path.isfile(os.path.join(path, STATE_FILE)):
                found.append((int(match[1]), path))
    return sorted(found)


def resolve_checkpoint(config: TrainConfig) -> str | None:
    """The checkpoint folder to resume from, or None to start afresh ("latest" with none saved yet)."""
    wanted = config.resume_from_checkpoint
    if not wanted:
        return None
    if wanted == "latest":
        found = list_checkpoints(config.output_dir)
        return found[-1][1] if found else None
    if not os.path.isfile(os.path.join(wanted, STATE_FILE)):
        raise TrainingError(f"cannot resume from '{wanted}': it is not a checkpoint folder written by this "
                            f"training loop (no {STATE_FILE} in it)")
    return wanted


@dataclass
class LoopState:
    """What a checkpoint records besides accelerate's state: steps done and how far the data was read."""

    step: int = 0
    micro_batches: int = 0  # micro-batches this process has read since the start (all processes alike)
    num_processes: int = 1
    train_batch_size: int = 0

    def save(self, folder: str) -> None:
        with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(self), f, indent=2)

    @classmethod
    def load(cls, folder: str) -> "LoopState":
        with open(os.path.join(folder, STATE_FILE), encoding="utf-8") as f:
            return cls(**json.load(f))


# ---- the loop ------------------------------------------------------------------------------------------

def micro_batch_seed(seed: int, micro_batch: int, process_index: int) -> int:
    """A well-mixed 63-bit seed for one micro-batch of one process."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(micro_batch), int(process_index)])
               .generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def make_accelerator(config: TrainConfig) -> "Accelerator":
    """The Accelerator run_training builds when the caller passes none."""
    require_accelerate("training")
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, ProjectConfiguration

    # accelerate keeps one process-wide state and refuses a second Accelerator with another precision.
    # Several runs in one process (tests, notebooks) may differ; a single-process state holds nothing to keep.
    if PartialState._shared_state and PartialState().distributed_type == DistributedType.NO:
        AcceleratorState._reset_state(reset_partial_state=True)
    project = ProjectConfiguration(project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, "logs"))
    # "no" leaves the choice to `accelerate launch --mixed_precision` / `accelerate config`, if either sets one.
    precision = None if config.mixed_precision == "no" else config.mixed_precision
    return Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps, mixed_precision=precision,
                       log_with=config.report_to, project_config=project)


def run_training(
    config: TrainConfig,
    *,
    trainable: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    collate_fn: Callable[[list], dict],
    compute_loss: Callable[[dict], Any],
    frozen: Sequence[torch.nn.Module] = (),
    save_weights: Callable[[torch.nn.Module, str], None],
    validate: Callable[[torch.nn.Module, int, str], None] | None = None,
    accelerator: "Accelerator | None" = None,
    frozen_fp32: Sequence[torch.nn.Module] = (),
    bucket_keys: Sequence | None = None,
    hparams: dict[str, Any] | None = None,
) -> list[float]:
    """Train `trainable` (its parameters with requires_grad) on `dataset` until config.max_steps.

    collate_fn: list of dataset items -> dict batch (tensors are moved to the device; the loop adds
      `model`, `generator` and `global_step`, see the module docstring).
    compute_loss(batch): the loss tensor, or (loss, {name: float}) for extra logged values. It runs under
      `accelerator.autocast()` and must run the network as `batch["model"]`.
    frozen: modules compute_loss uses without training them (VAE, text encoder, a frozen UNet): put on the
      device in the mixed-precision dtype, eval mode, requires_grad False. frozen_fp32: the same in float32.
    save_weights(model, folder): write the unwrapped network into `folder` in the pack's layout (the loop
      calls it with output_dir at the end and with each checkpoint folder).
    validate(model, step, folder): write validation images for `step` into `folder` (main process only).
    bucket_keys: one hashable bucket per item (default: `dataset.bucket_sizes` if present, else one bucket).
    hparams: the phase's own settings, stored beside the TrainConfig in output_dir/train_config.json.
    Returns this process's loss for every optimiser step run by this call (mean over its micro-batches).
    """
    accelerator = accelerator or make_accelerator(config)
    os.makedirs(config.output_dir, exist_ok=True)
    if accelerator.is_main_process:
        _write_config(config, hparams, accelerator)
    params = _place_networks(accelerator, config, trainable, frozen, frozen_fp32)
    model, optimizer, lr_schedule = _prepare_optimiser(accelerator, config, trainable, params)
    sampler = _bucket_sampler(accelerator, config, dataset, bucket_keys)
    state = LoopState(num_processes=accelerator.num_processes, train_batch_size=config.train_batch_size)
    resume = resolve_checkpoint(config)
    if resume is not None:
        state = _resume(accelerator, resume, state)

    if config.report_to:
        accelerator.init_trackers(config.tracker_project_name,
                                  config=_flat_hparams(dataclasses.asdict(config), hparams))
    logger = _JsonlLog(os.path.join(config.output_dir, "logs", LOG_FILE), accelerator.is_main_process)
    batches = _batches(sampler, dataset, collate_fn, config, state.micro_batches, accelerator.device)
    losses: list[float] = []
    window: list[torch.Tensor] = []
    started = time.monotonic()
    accelerator.print(f"training {sum(p.numel() for p in params) / 1e6:.2f}M parameters for "
                      f"{config.max_steps - state.step} steps from step {state.step}; batch per step "
                      f"{config.train_batch_size} x {accelerator.num_processes} processes x "
                      f"{config.gradient_accumulation_steps} accumulation")
    while state.step < config.max_steps:
        step_loss, extras, grad_norm = _optimiser_step(accelerator, config, state, model, optimizer, params,
                                                       batches, compute_loss)
        if not optimizer.step_was_skipped:  # an fp16 overflow step does not count towards the warm-up
            lr_schedule.step()
        state.step += 1
        losses.append(step_loss.item())
        window.append(step_loss)

        if state.step % config.log_every == 0 or state.step == config.max_steps:
            _log_window(accelerator, config, logger, state.step, window, lr_schedule, started, extras, grad_norm)
            window = []
        if state.step % config.checkpointing_steps == 0:
            _save_checkpoint(accelerator, model, config, state, save_weights)
        if validate is not None and (state.step % config.validation_steps == 0 or state.step == config.max_steps):
            _validate(accelerator, model, validate, state.step, config.output_dir)

    _finish(accelerator, model, config, save_weights)
    return losses


def _place_networks(accelerator: "Accelerator", config: TrainConfig, trainable: torch.nn.Module,
                    frozen: Sequence[torch.nn.Module], frozen_fp32: Sequence[torch.nn.Module]) -> list:
    """Frozen modules on the device in the mixed-precision dtype (or float32), eval, without gradients;
    the trainable one in float32, train mode. Returns the parameters to optimise."""
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(str(accelerator.mixed_precision), torch.float32)
    for module in frozen:
        module.requires_grad_(False).eval().to(device, dtype=weight_dtype)
    for module in frozen_fp32:
        module.requires_grad_(False).eval().to(device)
    if config.gradient_checkpointing:
        for module in (trainable, *frozen, *frozen_fp32):
            if hasattr(module, "enable_gradient_checkpointing"):
                module.enable_gradient_checkpointing()
    trainable.to(device, dtype=torch.float32).train()
    params = [p for p in trainable.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the trainable network has no parameter with requires_grad")
    return params


def _prepare_optimiser(accelerator: "Accelerator", config: TrainConfig, trainable: torch.nn.Module, params: list):
    """(the prepared model, Adam, its linear warm-up schedule registered for checkpointing)."""
    optimizer = torch.optim.Adam(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                 eps=config.adam_epsilon, weight_decay=0.0)
    warmup = max(0, int(config.lr_warmup_steps))
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))
    model, optimizer = accelerator.prepare(trainable, optimizer)
    # Stepped by hand once per optimiser step (accelerate's wrapper would step it once per process).
    accelerator.register_for_checkpointing(lr_schedule)
    return model, optimizer, lr_schedule


def _bucket_sampler(accelerator: "Accelerator", config: TrainConfig, dataset, bucket_keys: Sequence | None):
    from .dataset import BucketBatchSampler

    keys = bucket_keys if bucket_keys is not None else getattr(dataset, "bucket_sizes", None)
    return BucketBatchSampler(keys if keys is not None else [0] * len(dataset), config.train_batch_size,
                              seed=config.seed, num_replicas=accelerator.num_processes,
                              rank=accelerator.process_index)


def _optimiser_step(accelerator: "Accelerator", config: TrainConfig, state: LoopState, model, optimizer,
                    params: list, batches: Iterator[dict], compute_loss: Callable[[dict], Any]):
    """One optimiser step over `gradient_accumulation_steps` micro-batches: (mean loss tensor, mean extra
    metrics, the clipped gradient norm or None)."""
    device, accum = accelerator.device, config.gradient_accumulation_steps
    step_loss = torch.zeros((), device=device)
    extras: dict[str, float] = {}
    for micro in range(accum):
        batch = next(batches)
        batch["generator"] = _generator(device, micro_batch_seed(config.seed, state.micro_batches,
                                                                 accelerator.process_index))
        batch["global_step"] = state.step
        batch["model"] = model
        state.micro_batches += 1
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss, metrics = _split_loss(compute_loss(batch))
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss is {loss.item()} at step {state.step + 1}")
            accelerator.backward(loss)
            grad_norm = None
            if accelerator.sync_gradients and config.max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        step_loss += loss.detach().float() / accum
        for name, value in metrics.items():
            extras[name] = extras.get(name, 0.0) + float(value) / accum
    if not accelerator.sync_gradients:
        raise TrainingError("gradient accumulation went out of step with the loop")  # cannot happen
    return step_loss, extras, grad_norm


def _log_window(accelerator: "Accelerator", config: TrainConfig, logger: "_JsonlLog", step: int,
                window: list[torch.Tensor], lr_schedule, started: float, extras: dict[str, float], grad_norm) -> None:
    """Log the mean loss of the steps since the last log (over every process) with the step's extras."""
    mean_loss = accelerator.reduce(torch.stack(window).mean(), reduction="mean").item()
    record = {"step": step, "loss": mean_loss, "lr": lr_schedule.get_last_lr()[0],
              "seconds": round(time.monotonic() - started, 3), **extras}
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    logger.write(record)
    if config.report_to:
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
    accelerator.print(f"step {step}/{config.max_steps} loss {mean_loss:.4f}")


def _finish(accelerator: "Accelerator", model, config: TrainConfig, save_weights) -> None:
    """Every process done, then the main one writes the final weights into output_dir."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_weights(accelerator.unwrap_model(model), config.output_dir)
    accelerator.wait_for_everyone()
    if config.report_to:
        accelerator.end_training()


def _split_loss(output) -> tuple[torch.Tensor, dict[str, float]]:
    if isinstance(output, tuple):
        loss, metrics = output
        return loss, dict(metrics)
    return output, {}


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _batches(sampler, dataset, collate_fn, config: TrainConfig, start: int, device) -> Iterator[dict]:
    """Batches on `device` forever, epoch after epoch, beginning with micro-batch number `start`."""
    per_epoch = len(sampler)
    epoch, offset = divmod(start, per_epoch)
    while True:
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler.epoch_batches(epoch, start=offset), collate_fn=collate_fn,
            num_workers=config.dataloader_num_workers, pin_memory=device.type == "cuda")
        for batch in loader:
            if not isinstance(batch, dict):
                raise TrainingError(f"collate_fn must return a dict, got {type(batch).__name__}")
            yield {k: _to_device(v, device) for k, v in batch.items()}
        epoch, offset = epoch + 1, 0


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return type(value)(v.to(device, non_blocking=True) for v in value)
    return value


def _resume(accelerator: "Accelerator", folder: str, fresh: LoopState) -> LoopState:
    saved = LoopState.load(folder)
    if saved.num_processes != fresh.num_processes or saved.train_batch_size != fresh.train_batch_size:
        # The data position and the per-process RNG states only mean the same thing with the same layout.
        accelerator.print(f"warning: '{folder}' was saved with {saved.num_processes} processes x batch "
                          f"{saved.train_batch_size}; resuming with {fresh.num_processes} x {fresh.train_batch_size} "
                          "continues training but not the identical data order")
    accelerator.load_state(folder)
    accelerator.print(f"resumed from {folder} at step {saved.step}")
    return dataclasses.replace(saved, num_processes=fresh.num_processes, train_batch_size=fresh.train_batch_size)


def _save_checkpoint(accelerator: "Accelerator", model, config: TrainConfig, state: LoopState,
                     save_weights: Callable[[torch.nn.Module, str], None]) -> None:
    folder = os.path.join(config.output_dir, f"{CHECKPOINT_PREFIX}{state.step}")
    if accelerator.is_main_process and config.checkpoints_total_limit:
        for _, old in list_checkpoints(config.output_dir)[:-config.checkpoints_total_limit + 1 or None]:
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(folder)  # every process: each saves its own RNG states
    if accelerator.is_main_process:
        save_weights(accelerator.unwrap_model(model), folder)
        state.save(folder)  # written last: its presence marks the checkpoint complete
    accelerator.wait_for_everyone()


def _validate(accelerator: "Accelerator", model, validate, step: int, output_dir: str) -> None:
    if accelerator.is_main_process:
        folder = os.path.join(output_dir, "validation")
        os.makedirs(folder, exist_ok=True)
        unwrapped = accelerator.unwrap_model(model)
        # Sampling must not touch the RNG streams training continues from.
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), accelerator.autocast():
            validate(unwrapped, step, folder)
        unwrapped.train()
    accelerator.wait_for_everyone()


class _JsonlLog:
    def __init__(self, path: str, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled:
            os.makedirs(os.path.dirname(path), exist_ok=True)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def read_log(output_dir: str) -> list[dict]:
    """The records of output_dir/logs/train_log.jsonl, in order."""
    path = os.path.join(output_dir, "logs", LOG_FILE)
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_config(config: TrainConfig, hparams: dict | None, accelerator: "Accelerator") -> None:
    record = {"train": dataclasses.asdict(config), "phase": hparams or {},
              "num_processes": accelerator.num_processes, "mixed_precision": str(accelerator.mixed_precision)}
    with open(os.path.join(config.output_dir, "train_config.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, default=str)


def _flat_hparams(train: dict, phase: dict | None) -> dict:
    """Tracker-friendly hyper-parameters (scalars and strings only)."""
    flat = {}
    for key, value in {**train, **(phase or {})}.items():
        if value is None or isinstance(value, (bool, int, float, str)):
            flat[key] = value if value is not None else "none"
        else:
            flat[key] = str(value)
    return flat
