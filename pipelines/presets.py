"""The settings each mode runs with unless the user chooses others: the one source for the command line
(`restore --mode`), the bundled workflows (scripts/build_workflows.py writes these values into their
widgets) and the evaluation. tests/test_presets.py pins all three to this module.

- `diffbody` is the paper's: DDPM with 200 steps in both stages, every prior at strength 1 (how the
  multi-prior ControlNet is trained, eq. 3) and the colour adapter at weight 1 (eq. 4).
- `public` runs stage 2 on public files that were never trained together: ControlNet-Union SDXL applied
  once per prior, residuals added. I_ir as *tile* at 1 carries the picture; pose, depth and normal at 0.5
  keep four summed controls from over-driving SDXL; IP-Adapter Plus XL at 0.6, because it is fed I_ir
  (there is no stage-1 I_res) and at 1 copies I_ir's blur and colour casts. Starting points, not tuned.
- The pose skeleton: `diffbody` draws the pack's own skeleton, which DiffBody's ControlNets are trained on;
  `public` feeds xinsir's ControlNet-Union, trained on skeletons whose limb width grows with the image
  (`xinsir_sticks`, pipelines/pose/draw.py: comfyui_controlnet_aux's "scale_stick_for_xinsr_cn").
- SwinIR's pre-upscale is 1 in both modes: the result has the photo's own size, which is what a
  full-reference evaluation compares and what an API client expects; raise it for small photos.
- Stage 1's guidance 7.5 (SD 2.1's usual) and stage 2's 5.0 (SDXL's usual range): the paper states none.

FAST is the speed profile over either mode (`restore --fast`, the `*_fast` workflows): DPM++ 2M on Karras
sigmas at 25 steps in both stages instead of DDPM 200 (8x fewer UNet calls), and stage 2's prompt p' reuses
the first caption p instead of a second LLaVA call on I_res. The rest of the mode's settings stay.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MODES = ("diffbody", "public")


@dataclass(frozen=True)
class ModeDefaults:
    upscale: float
    strengths: tuple[float, float, float, float]  # a1..a4: I_ir, I_pose, I_depth, I_normal
    adapter_weight: float
    stage1_scheduler: str = "ddpm"
    stage1_steps: int = 200
    stage1_cfg: float = 7.5
    stage2_scheduler: str = "ddpm"
    stage2_steps: int = 200
    stage2_cfg: float = 5.0
    seed: int = 0
    xinsir_sticks: bool = False  # the pose skeleton drawn as xinsir's ControlNets expect it


# The public mode's depth and normal priors: Depth Anything V2 Small (the Apache-2.0 one; Base and Large are
# sharper but non-commercial) and Marigold normals v1.1.
PUBLIC_DEPTH_MODEL = "Depth-Anything-V2-Small-hf"
PUBLIC_NORMAL_SOURCE = "marigold-normals-v1-1"

MODE_DEFAULTS = {
    "diffbody": ModeDefaults(upscale=1.0, strengths=(1.0, 1.0, 1.0, 1.0), adapter_weight=1.0),
    "public": ModeDefaults(upscale=1.0, strengths=(1.0, 0.5, 0.5, 0.5), adapter_weight=0.6, xinsir_sticks=True),
}


@dataclass(frozen=True)
class SpeedProfile:
    """What a speed profile changes over a mode's defaults: the samplers, and whether stage 2 re-captions."""

    stage1_scheduler: str
    stage1_steps: int
    stage2_scheduler: str
    stage2_steps: int
    recaption: bool


FAST = SpeedProfile(stage1_scheduler="dpmpp_2m_karras", stage1_steps=25, stage2_scheduler="dpmpp_2m_karras",
                    stage2_steps=25, recaption=False)


def with_speed(preset: ModeDefaults, profile: SpeedProfile) -> ModeDefaults:
    """A mode's defaults with a speed profile's samplers (its `recaption` the caller applies)."""
    return replace(preset, stage1_scheduler=profile.stage1_scheduler, stage1_steps=profile.stage1_steps,
                   stage2_scheduler=profile.stage2_scheduler, stage2_steps=profile.stage2_steps)


# ComfyUI's KSampler (sampler_name, scheduler) for a stage-2 scheduler of ours: the paper's DDPM on the
# evenly spaced training timesteps is KSampler's `ddpm` sampler with the `ddim_uniform` schedule; DPM++ 2M
# on Karras sigmas (rho 7, the schedule's own smallest and largest sigma) is `dpmpp_2m` with `karras`.
KSAMPLER_NAMES = {"ddpm": ("ddpm", "ddim_uniform"), "dpmpp_2m_karras": ("dpmpp_2m", "karras")}


# Per-person restoration of group photos (pipelines/per_person.py, `restore --per-person`, the diffbody_group
# workflow): the context around each person (a fraction of their longer side), what restores the rest of the
# picture, and how much the face pass may change a face (low: the face is kept, the priors refine it).
PERSON_CONTEXT = 0.1
GLOBAL_PASSES = ("full", "swinir")
FACE_DENOISE = 0.35
