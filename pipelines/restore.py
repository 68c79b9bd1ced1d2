"""The whole DiffBody pipeline without ComfyUI, for the command line: stage 0 -> stage 1 -> re-caption ->
stage 2 (paper section 3), or, in the public-weights mode, stage 0 -> depth/normal estimators -> stage 2.

I_ir = SwinIR(I_LQ); I_pose = Pose(I_ir); p = LLaVA(I_ir); stage 1 gives I_res, I_depth, I_normal from
I_ir, I_pose and p; p' = LLaVA(I_res) (the paper re-captions the stage-1 result); stage 2 restores from the
priors I_ir, I_pose, I_depth, I_normal (strengths a1..a4), the colour adapter on I_res and p'.

Public-weights mode (mode "public", no DiffBody weights): I_depth and I_normal come from public estimators
run on I_ir (pipelines/depth_normal.py); stage 2 is SDXL with ControlNet-Union SDXL (each prior as its
union control type, pipelines/union_control.py) and IP-Adapter Plus XL fed CLIP(I_ir), as
there is no I_res; the prompt is p. An approximation of DiffBody from public parts, not the paper's model.

The work runs stage by stage over all images, loading each stage's networks when it starts and
releasing them when it ends: SDXL, SD 2.1, LLaVA and CLIP ViT-H do not fit a small card together. LLaVA
is kept (on the CPU in between) because it is needed twice. Intermediate results stay on the CPU.

Sizes: both diffusion stages sample on the paper's training buckets (pipelines/buckets.py) and bring
their results back to I_ir's size, so every output has the size of the input times `upscale`.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Mapping

import torch

from ..models.multiprior_controlnet import PRIORS
from .buckets import STAGE2_FILLS, plan_resize
from .presets import MODE_DEFAULTS, MODES
from .stage0 import Stage0Options, run_stage0

_PAPER = MODE_DEFAULTS["diffbody"]


@dataclass(frozen=True)
class ModelPaths:
    """Where every network of the run is. Stage-1/2 entries may be None with `stage0_only`."""

    swinir: str
    pose_backend: str
    pose_files: dict[str, str]  # role -> path, as pipelines.pose.backends.make_estimator takes them
    llava: str | None = None  # None: no captioning (empty prompts)
    sd21: str | None = None  # SD 2.1-base diffusers folder or single file (stage 1's VAE and text encoder)
    stage1_unet: str | None = None
    stage1_controlnet: str | None = None
    sdxl: str | None = None  # SDXL base diffusers folder or single file
    stage2_controlnet: str | None = None
    colour_adapter: str | None = None  # public mode: ip-adapter-plus_sdxl_vit-h.safetensors
    clip_vision: str | None = None
    # public-weights mode
    union_controlnet: str | None = None  # ControlNet-Union SDXL (xinsir's ProMax single file)
    depth_model: str | None = None  # depth estimator folder
    normal_model: str | None = None  # Marigold normals folder; None: normals from the depth
    # CLIP tokenizers of a single-file sd21 / sdxl (models/single_file.py load_clip_tokenizers' source: a diffusers
    # folder or CLIP's vocab.json + merges.txt); None: looked up in the ComfyUI install (models/files.py)
    sd21_tokenizer: str | None = None
    sdxl_tokenizer: str | None = None


@dataclass(frozen=True)
class RestoreOptions:
    mode: str = "diffbody"  # one of MODES
    stage0: Stage0Options = field(default_factory=Stage0Options)
    stage0_only: bool = False
    recaption: bool = True  # p' = LLaVA(I_res) before stage 2 (only when captioning)
    size_mode: str = "bucket"
    stage1_scheduler: str = _PAPER.stage1_scheduler
    stage1_steps: int | None = None  # None: the scheduler's default (DDPM: the paper's 200)
    stage1_cfg: float = _PAPER.stage1_cfg
    stage2_scheduler: str = _PAPER.stage2_scheduler
    stage2_steps: int | None = None  # None: the scheduler's default (DDPM: the paper's 200)
    cfg: float = _PAPER.stage2_cfg
    strengths: tuple[float, float, float, float] = _PAPER.strengths  # a1..a4: I_ir, I_pose, I_depth, I_normal
    adapter_weight: float = _PAPER.adapter_weight
    negative_prompt: str = ""
    seed: int = 0
    device: str = "cpu"
    dtype: torch.dtype = torch.float32


@dataclass
class RestoreResult:
    """One image's results, each (3, H, W) float in 0..1 on the CPU at the input size times `upscale`."""

    cleaned: torch.Tensor  # I_ir
    pose_image: torch.Tensor  # I_pose
    keypoints: dict
    caption: str = ""  # p
    stage1: torch.Tensor | None = None  # I_res (None in the public-weights mode)
    depth: torch.Tensor | None = None
    normal: torch.Tensor | None = None
    recaption: str = ""  # p' (empty without captioning or re-captioning)
    restored: torch.Tensor | None = None  # stage 2's result


# progress(description, total, unit) -> a context-managed bar with update(n) (a tqdm bar).
Progress = Callable[[str, int, str], ContextManager]


def tqdm_progress(description: str, total: int, unit: str) -> ContextManager:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit=unit, leave=False)


# role -> constructor arguments of a single-file network whose file does not carry them: "clip_vision"
# (CLIPVisionConfig; default ViT-H-14), "union_controlnet" (ControlNetUnionModel; default SDXL's), "sdxl" and
# "sd21" ({part: config} of a single-file checkpoint, models/single_file.py; default SDXL 1.0 base's, SD 2.1-base's).
NetworkConfigs = Mapping[str, dict]


def restore_images(images: list[torch.Tensor], models: ModelPaths, options: RestoreOptions,
                   progress: Progress = tqdm_progress, *,
                   network_configs: NetworkConfigs | None = None) -> list[RestoreResult]:
    """Degraded images, each (1, 3, H, W) float in 0..1 (sizes may differ) -> one RestoreResult each.
    network_configs: only for networks of other shapes than the released ones (the --tiny plumbing check)."""
    if options.mode not in MODES:
        raise ValueError(f"unknown mode {options.mode!r}; choose one of {', '.join(MODES)}")
    public = options.mode == "public"
    captioner = _load_captioner(models, options)
    recaption = captioner is not None and options.recaption and not public
    results = _run_stage0(images, models, captioner, options, progress, keep_captioner=recaption)
    if options.stage0_only:
        return results
    if public:
        del captioner
        _release()
        _estimate_depth_normal(results, models, options, progress)
    else:
        _run_stage1(results, models, options, progress, network_configs or {})
        if recaption:
            _recaption(results, captioner, options, progress)
        del captioner
        _release()
    _run_stage2(results, models, options, progress, network_configs or {})
    return results


# -- stages ------------------------------------------------------------------------------------------------

def _load_captioner(models: ModelPaths, options: RestoreOptions):
    if models.llava is None:
        return None
    from .caption import LlavaCaptioner

    return LlavaCaptioner.load(models.llava, device=options.device)


def _run_stage0(images, models: ModelPaths, captioner, options: RestoreOptions, progress, *,
                keep_captioner: bool) -> list[RestoreResult]:
    from ..models.swinir import load_swinir
    from .pose.backends import make_estimator

    swinir = load_swinir(models.swinir)
    estimator = make_estimator(models.pose_backend, models.pose_files, device=str(options.device))
    results = []
    with progress("stage 0 (cleanup, pose, caption)", len(images), "image") as bar:
        for image in images:
            out = run_stage0(image, swinir=swinir, pose_estimator=estimator, captioner=captioner,
                             options=options.stage0, device=torch.device(options.device))
            results.append(RestoreResult(out.cleaned[0], out.pose_images[0], out.keypoints[0],
                                         out.captions[0] if out.captions else ""))
            bar.update(1)
    if keep_captioner and not options.stage0_only:
        captioner.to("cpu")  # back for the re-caption; its device memory goes to stage 1 meanwhile
    del swinir, estimator
    _release()
    return results


def _run_stage1(results: list[RestoreResult], models: ModelPaths, options: RestoreOptions, progress,
                network_configs: NetworkConfigs) -> None:
    from ..models.single_file import load_sd21
    from ..models.stage1_weights import load_stage1_controlnet, load_stage1_unet
    from .stage1 import DEFAULT_STEPS, Stage1Pipeline

    device, dtype = options.device, options.dtype
    components = load_sd21(models.sd21, tokenizer_source=models.sd21_tokenizer, configs=network_configs.get("sd21"),
                           device=device, dtype=dtype)
    unet = load_stage1_unet(models.stage1_unet, device=device, dtype=dtype)
    controlnet = load_stage1_controlnet(models.stage1_controlnet, device=device, dtype=dtype)
    pipeline = Stage1Pipeline(unet, controlnet, components.vae, components.text_encoder)
    steps = options.stage1_steps or DEFAULT_STEPS[options.stage1_scheduler]
    with progress("stage 1 (I_res, depth, normal)", len(results), "image") as images_bar:
        for result in results:
            with progress("  stage-1 steps", steps, "step") as steps_bar:
                out = pipeline(result.cleaned[None], result.pose_image[None], [result.caption],
                               options.negative_prompt, steps=steps, scheduler=options.stage1_scheduler,
                               cfg=options.stage1_cfg, seed=options.seed, size_mode=options.size_mode,
                               progress=lambda done, total: steps_bar.update(1))
            result.stage1, result.depth, result.normal = out.rgb[0], out.depth[0], out.normal[0]
            images_bar.update(1)
    del pipeline, unet, controlnet, components
    _release()


def _estimate_depth_normal(results: list[RestoreResult], models: ModelPaths, options: RestoreOptions,
                           progress) -> None:
    """Public-weights mode: I_depth and I_normal from the public estimators, on I_ir."""
    from .depth_normal import load_depth_normal_estimator

    estimator = load_depth_normal_estimator(models.depth_model, models.normal_model, device=options.device,
                                            dtype=options.dtype, seed=options.seed)
    with progress("depth and normal priors", len(results), "image") as bar:
        for result in results:
            depth, normal = estimator.estimate(result.cleaned[None])
            result.depth, result.normal = depth[0], normal[0]
            bar.update(1)
    del estimator
    _release()


def _recaption(results: list[RestoreResult], captioner, options: RestoreOptions, progress) -> None:
    captioner.to(options.device)
    s0 = options.stage0
    with progress("re-caption p' on I_res", len(results), "image") as bar:
        for result in results:
            result.recaption = captioner.caption(result.stage1[None], prompt=s0.caption_prompt,
                                                 max_new_tokens=s0.max_new_tokens, seed=s0.seed,
                                                 device=torch.device(options.device))[0]
            bar.update(1)


def _run_stage2(results: list[RestoreResult], models: ModelPaths, options: RestoreOptions, progress,
                network_configs: NetworkConfigs) -> None:
    pipeline = _load_stage2(models, options, network_configs)
    strengths = dict(zip(PRIORS, options.strengths))
    with progress("stage 2 (final restoration)", len(results), "image") as images_bar:
        for result in results:
            settings = _stage2_settings(result, strengths, options)
            with progress("  stage-2 steps", settings.steps, "step") as steps_bar:
                result.restored = _restore_one(pipeline, result, settings, options,
                                               lambda done, total: steps_bar.update(1))
            images_bar.update(1)
    del pipeline
    _release()


def _load_stage2(models: ModelPaths, options: RestoreOptions, network_configs: NetworkConfigs):
    from ..models.colour_adapter import load_colour_adapter
    from ..models.sdxl_components import load_clip_vision
    from ..models.single_file import load_sdxl
    from .stage2 import Stage2Pipeline

    device, dtype = options.device, options.dtype
    # SDXL's original VAE overflows in fp16: it stays float32 (load_sdxl's default).
    unet, vae, text_encoders = load_sdxl(models.sdxl, tokenizer_source=models.sdxl_tokenizer,
                                         configs=network_configs.get("sdxl"), device=device, dtype=dtype)
    if options.mode == "public":
        from ..models.union_controlnet import load_union_controlnet
        from .union_control import UnionPriorControl

        controlnet = UnionPriorControl(load_union_controlnet(models.union_controlnet, device=device, dtype=dtype,
                                                             config=network_configs.get("union_controlnet")))
    else:
        from ..models.stage2_weights import load_multiprior

        controlnet = load_multiprior(models.stage2_controlnet, dtype=dtype).to(device)
    adapter = load_colour_adapter(models.colour_adapter, unet.config, dtype=dtype).to(device)
    image_encoder = load_clip_vision(models.clip_vision, device=device, dtype=dtype,
                                     config=network_configs.get("clip_vision"))
    return Stage2Pipeline(unet, vae, text_encoders, controlnet, adapter, image_encoder)


def _stage2_settings(result: RestoreResult, strengths: dict[str, float], options: RestoreOptions):
    from .stage2 import DEFAULT_STEPS, Stage2Settings

    return Stage2Settings(prompt=result.recaption or result.caption, negative_prompt=options.negative_prompt,
                          scheduler=options.stage2_scheduler,
                          steps=options.stage2_steps or DEFAULT_STEPS[options.stage2_scheduler], cfg=options.cfg,
                          seed=options.seed, strengths=strengths, adapter_weight=options.adapter_weight)


def _restore_one(pipeline, result: RestoreResult, settings, options: RestoreOptions, progress) -> torch.Tensor:
    """Stage 2 on one image's bucket canvas (SDXL needs sizes it can halve; priors padded as in stage 1:
    photos and maps by their edges, the skeleton with black), cropped and resized back to I_ir's size. The
    colour adapter sees I_res, or I_ir in the public-weights mode (no stage 1)."""
    plan = plan_resize(*result.cleaned.shape[-2:], mode=options.size_mode)
    images = {"image": result.cleaned, "pose": result.pose_image, "depth": result.depth, "normal": result.normal}
    priors = {name: plan.to_canvas(images[name][None], fill=STAGE2_FILLS[name]) for name in PRIORS}
    colour_source = result.cleaned if options.mode == "public" else result.stage1
    restored = plan.to_canvas(colour_source[None], fill=STAGE2_FILLS["colour"])
    out = pipeline(priors, restored, settings, progress=progress)
    return plan.from_canvas(out)[0]


def _release() -> None:
    """Hand freed device memory back before the next stage loads its networks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

