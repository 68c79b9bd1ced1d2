"""The settings each mode runs with unless the user chooses others: the one source for the command line
(`restore --mode`), the bundled workflows (scripts/build_workflows.py writes these values into their
widgets) and the evaluation. tests/test_presets.py pins all three to this module.

- `diffbody` is the paper's: DDPM with 200 steps in both stages, every prior at strength 1 (how the
  multi-prior ControlNet is trained, eq. 3) and the colour adapter at weight 1 (eq. 4).
- `public` runs stage 2 on public files that were never trained together: ControlNet-Union SDXL applied
  once per prior, residuals added. I_ir as *tile* at 1 carries the picture; pose, depth and normal at 0.5
  keep four summed controls from over-driving SDXL; IP-Adapter Plus XL at 0.6, because it is fed I_ir
  (there is no stage-1 I_res) and at 1 copies I_ir's blur and colour casts. Starting points, not tuned.
- SwinIR's pre-upscale is 1 in both modes: the result has the photo's own size, which is what a
  full-reference evaluation compares and what an API client expects; raise it for small photos.
- Stage 1's guidance 7.5 (SD 2.1's usual) and stage 2's 5.0 (SDXL's usual range): the paper states none.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# The public mode's depth and normal priors: Depth Anything V2 Small (the Apache-2.0 one; Base and Large are
# sharper but non-commercial) and Marigold normals v1.1.
PUBLIC_DEPTH_MODEL = "Depth-Anything-V2-Small-hf"
PUBLIC_NORMAL_SOURCE = "marigold-normals-v1-1"

MODE_DEFAULTS = {
    "diffbody": ModeDefaults(upscale=1.0, strengths=(1.0, 1.0, 1.0, 1.0), adapter_weight=1.0),
    "public": ModeDefaults(upscale=1.0, strengths=(1.0, 0.5, 0.5, 0.5), adapter_weight=0.6),
}

# ComfyUI's KSampler (sampler_name, scheduler) for a stage-2 scheduler of ours: the paper's DDPM on the
# evenly spaced training timesteps is KSampler's `ddpm` sampler with the `ddim_uniform` schedule.
KSAMPLER_NAMES = {"ddpm": ("ddpm", "ddim_uniform")}
