"""The sampling pieces both stages share (and so the training previews, which sample through the stages):
schedulers on a model's training schedule, per-item seeds, one scheduler step, classifier-free guidance.

Schedulers: "ddpm" (the paper's sampler; stochastic), "ddim" (eta 0, deterministic), "dpmpp_2m"
(DPM-Solver++ 2M), "dpmpp_2m_karras" (the same on Karras et al.'s sigmas, rho 7 between the schedule's
smallest and largest sigma: ComfyUI's `dpmpp_2m` + `karras`) and "euler" (EulerDiscrete), each built on the
diffusers scheduler config of the model's training schedule (SD 2.1-base's for stage 1, SDXL 1.0's for
stage 2). A stage may offer fewer of them.

Timesteps: Stable Diffusion's "leading" spacing with steps_offset 1 goes wrong at 1000 steps: DDPM, DDIM and
Euler ask for timestep 1000, one past the schedule, and DPM-Solver's timesteps collapse to a single repeated
one (its steps then run off its sigma table). `scheduler_for_steps` switches such step counts to "trailing"
spacing, which ends at 999 with every timestep distinct, so no UNet is asked for a timestep it was not
trained on. Karras sigmas are the exception: at hundreds of steps several distinct sigmas near 0 round to
the same integer timestep (all inside the schedule); they are meant for 20-50 steps.

Seeds: item i of a batch uses its own CPU generator seeded seed + i, for its initial noise and its DDPM
step noise, so an item's result does not depend on what else is in the batch, and a seed gives the same
noise on every device.

Guidance: the unconditional and conditional halves run as one doubled batch, unconditional first (see
`guidance_batch`); with cfg 1 the samplers skip the unconditional half altogether.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..models.errors import DiffBodyError

SCHEDULERS = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "euler")


class UnknownScheduler(DiffBodyError, ValueError):
    """A scheduler name other than those a stage offers."""


def check_scheduler(name: str, choices: Sequence[str] = SCHEDULERS) -> None:
    """Raise UnknownScheduler unless `name` is one of `choices`."""
    if name not in choices:
        raise UnknownScheduler(f"unknown scheduler {name!r}; choose one of {', '.join(choices)}")


def make_scheduler(name: str, schedule: Mapping[str, Any], *, choices: Sequence[str] = SCHEDULERS, **overrides):
    """A fresh diffusers scheduler `name` (one of `choices`) on the training schedule `schedule` (the
    arguments of a diffusers scheduler config), with `overrides` applied to the schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    check_scheduler(name, choices)
    config = dict(schedule, **overrides)
    if name == "ddpm":
        return DDPMScheduler(**config, variance_type="fixed_small", clip_sample=False)
    if name == "ddim":
        return DDIMScheduler(**config, set_alpha_to_one=False, clip_sample=False)
    if name in ("dpmpp_2m", "dpmpp_2m_karras"):
        return DPMSolverMultistepScheduler(**config, algorithm_type="dpmsolver++", solver_order=2,
                                           lower_order_final=True, use_karras_sigmas=name == "dpmpp_2m_karras")
    return EulerDiscreteScheduler(**config, interpolation_type="linear")


def scheduler_for_steps(name: str, steps: int, schedule: Mapping[str, Any], *,
                        choices: Sequence[str] = SCHEDULERS, device=None):
    """`make_scheduler(name, schedule)` with its timesteps set for `steps`; a step count whose timesteps
    would reach num_train_timesteps or repeat (the module doc's timestep guard) gets "trailing" spacing."""
    scheduler = make_scheduler(name, schedule, choices=choices)
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    if int(timesteps.max()) >= scheduler.config.num_train_timesteps or len(timesteps.unique()) < len(timesteps):
        scheduler = make_scheduler(name, schedule, choices=choices, timestep_spacing="trailing", steps_offset=0)
        scheduler.set_timesteps(steps, device=device)
    return scheduler


def item_generators(seed: int, batch: int) -> list[torch.Generator]:
    """One CPU generator per batch item, seeded seed, seed + 1, ... (batch-composition independent),
    wrapping at 2**64 (ComfyUI's seeds go up to 2**64 - 1, the most a torch generator takes)."""
    return [torch.Generator("cpu").manual_seed((int(seed) + i) % 2**64) for i in range(batch)]


def initial_noise(generators: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """(B, ...) float32 N(0, 1) noise of `shape` on the CPU; item i drawn from generators[i]."""
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generators])


def scheduler_step(scheduler, model_output: torch.Tensor, t, latents: torch.Tensor,
                   generators: list[torch.Generator]) -> torch.Tensor:
    """One scheduler step of the whole batch. diffusers draws step noise (DDPM's) item by item from a list
    of generators, so item i's comes from generators[i]; the updates themselves are element-wise."""
    return scheduler.step(model_output, t, latents, generator=generators).prev_sample


# One order for both stages: [unconditional, conditional], the order of diffusers' pipelines and of
# IP-Adapter, which stage 2's prompt embeddings, colour-adapter tokens and ControlNet inputs already
# follow (stage 1 put the conditional half first). Every item of the UNet batch is computed on its own,
# so the order changes no result: tests/test_stage1_sampler.py runs the old order against the new.
def guidance_batch(uncond: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The doubled model batch of classifier-free guidance: unconditional half, then conditional half."""
    return torch.cat([uncond, cond])


def guided(model_output: torch.Tensor, cfg: float) -> torch.Tensor:
    """Classifier-free guidance on a model output of a `guidance_batch`: uncond + cfg * (cond - uncond)."""
    uncond, cond = model_output.chunk(2)
    return uncond + cfg * (cond - uncond)
