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

import dataclasses
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
    denoise: float = 1.0  # stage 2: below 1, from each result's `start` image (Stage2Settings.denoise)
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
    start: torch.Tensor | None = None  # stage 2 starts from this image when options.denoise < 1 (the face pass)

    @property
    def final(self) -> torch.Tensor:
        """What the run made last: stage 2's result, or I_ir when it stopped after stage 0."""
        return self.cleaned if self.restored is None else self.restored


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
    job = RestoreJob(images, models, options, dict(network_configs or {}))
    restore_jobs([job], progress)
    return job.results


# RestoreJob.start_at: the first stage a job runs
FROM_DEGRADED, FROM_STAGE0, FROM_PRIORS = 0, 1, 2


@dataclass
class RestoreJob:
    """Images to restore with one set of files and options (one evaluation method, one restore command);
    restore_jobs fills `results`, one per image.

    start_at: FROM_DEGRADED (stage 0 on `images`); FROM_STAGE0 (`given` holds stage 0's results: I_ir, I_pose,
    keypoints, and p, written by LLaVA when empty and captioning: the per-person crops); FROM_PRIORS (`given`
    holds all stage 2 takes: I_ir, I_pose, depth and normal for non-zero strengths, I_res, p' or p, and `start`
    with options.denoise below 1: the face pass)."""

    images: list[torch.Tensor]
    models: ModelPaths
    options: RestoreOptions
    network_configs: NetworkConfigs = field(default_factory=dict)
    given: list[RestoreResult] | None = None
    start_at: int = FROM_DEGRADED
    results: list[RestoreResult] = field(default_factory=list)
    # per image: what its stage-0 work depends on (the image itself, the files, the settings); equal keys
    # share their work across jobs
    _keys: list[tuple] = field(default_factory=list, repr=False)

    def __post_init__(self):
        if (self.start_at == FROM_DEGRADED) != (self.given is None):
            raise ValueError("a RestoreJob has `given` results exactly when it does not start from the degraded images")

    def __len__(self) -> int:
        return len(self.images) if self.given is None else len(self.given)

    @property
    def public(self) -> bool:
        return self.options.mode == "public"

    @property
    def runs_stage1(self) -> bool:
        return not self.options.stage0_only and not self.public and self.start_at < FROM_PRIORS

    @property
    def estimates_priors(self) -> bool:
        """The public-weights mode's depth and normal estimators."""
        return not self.options.stage0_only and self.public and self.start_at < FROM_PRIORS

    @property
    def recaptions(self) -> bool:
        return self.runs_stage1 and self.models.llava is not None and self.options.recaption


def restore_jobs(jobs: list[RestoreJob], progress: Progress = tqdm_progress) -> None:
    """Every job's results, stage by stage across all the jobs, so each network is loaded once in the run
    (several methods of one evaluation share SwinIR, the pose model, LLaVA and SDXL) and, as in a single
    restore, released when its stage is over. Work that jobs share is done once: stage 0 of the same image
    object with the same files and stage-0 settings, stage 1 of it with the same stage-1 settings, the
    public estimators' priors. Within a stage, the jobs run grouped by the files they load, and only one
    network of each kind is held at a time (two SDXL files never sit in memory together)."""
    for job in jobs:
        if job.options.mode not in MODES:
            raise ValueError(f"unknown mode {job.options.mode!r}; choose one of {', '.join(MODES)}")
        job.results, job._keys = [], []
    # LLaVA is needed twice (p on I_ir, p' on I_res): loaded once, on the CPU in between.
    captioners = _Held()
    _run_stage0(jobs, captioners, progress)
    recaptioning = [job for job in jobs if job.recaptions]
    captioners.keep_only({_captioner_key(job) for job in recaptioning}, device="cpu")
    _run_stage1([job for job in jobs if job.runs_stage1], progress)
    _recaption_jobs(recaptioning, captioners, progress)
    captioners.release()
    _estimate_depth_normal([job for job in jobs if job.estimates_priors], progress)
    _run_stage2([job for job in jobs if not job.options.stage0_only], progress)


class _Held:
    """The networks of one stage, each loaded once by its key; a key's first item is its kind, and loading
    another network of a kind drops the one held (callers order their work by key, so nothing reloads)."""

    def __init__(self):
        self._held: dict[tuple, object] = {}

    def get(self, key: tuple, load: Callable[[], object]):
        if key not in self._held:
            stale = [held for held in self._held if held[0] == key[0]]
            for held in stale:
                del self._held[held]
            if stale:
                _release()
            self._held[key] = load()
        return self._held[key]

    def keep_only(self, keys: set, device: str) -> None:
        """Drop every network but `keys`, and move those to `device` (their device memory goes to the next
        stage meanwhile)."""
        for key in list(self._held):
            if key in keys:
                self._held[key].to(device)
            else:
                del self._held[key]
        _release()

    def release(self) -> None:
        self._held.clear()
        _release()


def _key(*parts) -> tuple:
    """A hashable key from files, settings and configs (dicts and dataclasses by their text)."""
    return tuple(part if isinstance(part, (str, int, float, type(None))) else repr(part) for part in parts)


def _by_key(jobs: list[RestoreJob], keys: Callable[[RestoreJob], tuple[tuple, ...]]) -> list[RestoreJob]:
    """The jobs ordered so that jobs loading the same networks run one after the other: by their first
    network's key, then the second's..., each key ranked by where it first appears (a stable sort)."""
    ranks: list[dict] = []
    for job in jobs:
        for position, key in enumerate(keys(job)):
            if position == len(ranks):
                ranks.append({})
            ranks[position].setdefault(key, len(ranks[position]))
    return sorted(jobs, key=lambda job: [ranks[i][key] for i, key in enumerate(keys(job))])


# -- stages ------------------------------------------------------------------------------------------------

def _captioner_key(job: RestoreJob) -> tuple:
    return _key("llava", job.models.llava, job.options.device)


def _load_captioner(llava: str, device: str):
    from .caption import LlavaCaptioner

    return LlavaCaptioner.load(llava, device=device)


def _stage0_networks_key(job: RestoreJob) -> tuple:
    m = job.models
    return _key("stage0", m.swinir, m.pose_backend, sorted(m.pose_files.items()), job.options.device)


def _run_stage0(jobs: list[RestoreJob], captioners: _Held, progress) -> None:
    from ..models.swinir import load_swinir
    from .pose.backends import make_estimator

    networks, done = _Held(), {}
    with progress("stage 0 (cleanup, pose, caption)", sum(len(job) for job in jobs), "image") as bar:
        for job in _by_key(jobs, lambda job: (_stage0_networks_key(job), _captioner_key(job))):
            m, device = job.models, job.options.device
            captioner = None if m.llava is None else captioners.get(_captioner_key(job),
                                                                    lambda: _load_captioner(m.llava, device))
            if job.given is not None:
                _take_given(job, captioner, done)
                bar.update(len(job))
                continue
            swinir = networks.get(_key("swinir", m.swinir), lambda: load_swinir(m.swinir))
            estimator = networks.get(_key("pose", *_stage0_networks_key(job)[2:]),
                                     lambda: make_estimator(m.pose_backend, m.pose_files, device=str(device)))
            for image in job.images:
                key = (id(image), _stage0_networks_key(job), _key(m.llava, job.options.stage0))
                if key not in done:
                    out = run_stage0(image, swinir=swinir, pose_estimator=estimator, captioner=captioner,
                                     options=job.options.stage0, device=torch.device(device))
                    done[key] = RestoreResult(out.cleaned[0], out.pose_images[0], out.keypoints[0],
                                              out.captions[0] if out.captions else "")
                job.results.append(dataclasses.replace(done[key]))
                job._keys.append(key)
                bar.update(1)
    networks.release()


def _take_given(job: RestoreJob, captioner, done: dict) -> None:
    """A job's given results as its own; from stage 0's results, p = LLaVA(I_ir) where the caption is empty."""
    s0 = job.options.stage0
    for given in job.given:
        key = (id(given), _key(job.models.llava, s0))
        if key not in done:
            done[key] = dataclasses.replace(given)
            if job.start_at == FROM_STAGE0 and captioner is not None and not given.caption:
                done[key].caption = captioner.caption(given.cleaned[None], prompt=s0.caption_prompt,
                                                      max_new_tokens=s0.max_new_tokens, seed=s0.seed,
                                                      device=torch.device(job.options.device))[0]
        job.results.append(dataclasses.replace(done[key]))
        job._keys.append(key)


def _stage1_networks_key(job: RestoreJob) -> tuple:
    m, o = job.models, job.options
    return _key("stage1", m.sd21, m.sd21_tokenizer, job.network_configs.get("sd21"), m.stage1_unet,
                m.stage1_controlnet, o.device, o.dtype)


def _load_stage1(job: RestoreJob):
    from ..models.single_file import load_sd21
    from ..models.stage1_weights import load_stage1_controlnet, load_stage1_unet
    from .stage1 import Stage1Pipeline

    m, device, dtype = job.models, job.options.device, job.options.dtype
    components = load_sd21(m.sd21, tokenizer_source=m.sd21_tokenizer, configs=job.network_configs.get("sd21"),
                           device=device, dtype=dtype)
    unet = load_stage1_unet(m.stage1_unet, device=device, dtype=dtype)
    controlnet = load_stage1_controlnet(m.stage1_controlnet, device=device, dtype=dtype)
    return Stage1Pipeline(unet, controlnet, components.vae, components.text_encoder)


def _run_stage1(jobs: list[RestoreJob], progress) -> None:
    if not jobs:
        return
    from .stage1 import DEFAULT_STEPS

    networks, done = _Held(), {}
    with progress("stage 1 (I_res, depth, normal)", sum(len(job) for job in jobs), "image") as images_bar:
        for job in _by_key(jobs, lambda job: (_stage1_networks_key(job),)):
            o = job.options
            pipeline = networks.get(_stage1_networks_key(job), lambda: _load_stage1(job))
            steps = o.stage1_steps or DEFAULT_STEPS[o.stage1_scheduler]
            settings = _key(o.negative_prompt, o.stage1_scheduler, steps, o.stage1_cfg, o.seed, o.size_mode)
            for index, result in enumerate(job.results):
                key = (job._keys[index], _stage1_networks_key(job), settings)
                if key not in done:
                    with progress("  stage-1 steps", steps, "step") as steps_bar:
                        out = pipeline(result.cleaned[None], result.pose_image[None], [result.caption],
                                       o.negative_prompt, steps=steps, scheduler=o.stage1_scheduler, cfg=o.stage1_cfg,
                                       seed=o.seed, size_mode=o.size_mode,
                                       progress=lambda done, total: steps_bar.update(1))
                    done[key] = out.rgb[0], out.depth[0], out.normal[0]
                result.stage1, result.depth, result.normal = done[key]
                job._keys[index] = key
                images_bar.update(1)
    networks.release()


def _recaption_jobs(jobs: list[RestoreJob], captioners: _Held, progress) -> None:
    """p' = LLaVA(I_res) for each job that re-captions; an I_res two jobs share is captioned once."""
    done = {}
    for job in jobs:
        captioner = captioners.get(_captioner_key(job), lambda: None)
        captioner.to(job.options.device)
        s0 = job.options.stage0
        settings = _key(job.models.llava, s0.caption_prompt, s0.max_new_tokens, s0.seed)
        pending = [result for key, result in zip(job._keys, job.results) if (key, settings) not in done]
        _recaption(pending, captioner, job.options, progress)
        for key, result in zip(job._keys, job.results):
            result.recaption = done.setdefault((key, settings), result.recaption)


def _estimator_key(job: RestoreJob) -> tuple:
    m, o = job.models, job.options
    return _key("estimator", m.depth_model, m.normal_model, o.device, o.dtype, o.seed)


def _estimate_depth_normal(jobs: list[RestoreJob], progress) -> None:
    """Public-weights mode: I_depth and I_normal from the public estimators, on I_ir."""
    if not jobs:
        return
    from .depth_normal import load_depth_normal_estimator

    networks, done = _Held(), {}
    with progress("depth and normal priors", sum(len(job) for job in jobs), "image") as bar:
        for job in _by_key(jobs, lambda job: (_estimator_key(job),)):
            m, o = job.models, job.options
            estimator = networks.get(_estimator_key(job), lambda: load_depth_normal_estimator(
                m.depth_model, m.normal_model, device=o.device, dtype=o.dtype, seed=o.seed))
            for key, result in zip(job._keys, job.results):
                if (key, _estimator_key(job)) not in done:
                    depth, normal = estimator.estimate(result.cleaned[None])
                    done[key, _estimator_key(job)] = depth[0], normal[0]
                result.depth, result.normal = done[key, _estimator_key(job)]
                bar.update(1)
    networks.release()


def _recaption(results: list[RestoreResult], captioner, options: RestoreOptions, progress) -> None:
    s0 = options.stage0
    with progress("re-caption p' on I_res", len(results), "image") as bar:
        for result in results:
            result.recaption = captioner.caption(result.stage1[None], prompt=s0.caption_prompt,
                                                 max_new_tokens=s0.max_new_tokens, seed=s0.seed,
                                                 device=torch.device(options.device))[0]
            bar.update(1)


def _stage2_keys(job: RestoreJob) -> tuple[tuple, tuple, tuple, tuple]:
    """The stage-2 networks' keys: SDXL, CLIP vision, the prior ControlNet, the colour adapter."""
    m, o, configs = job.models, job.options, job.network_configs
    placed = (o.device, o.dtype)
    control = (_key("control", "union", m.union_controlnet, configs.get("union_controlnet"), *placed) if job.public
               else _key("control", "multiprior", m.stage2_controlnet, *placed))
    return (_key("sdxl", m.sdxl, m.sdxl_tokenizer, configs.get("sdxl"), *placed),
            _key("clip_vision", m.clip_vision, configs.get("clip_vision"), *placed), control,
            _key("adapter", m.colour_adapter, m.sdxl, configs.get("sdxl"), *placed))


def _run_stage2(jobs: list[RestoreJob], progress) -> None:
    if not jobs:
        return
    networks = _Held()
    with progress("stage 2 (final restoration)", sum(len(job) for job in jobs), "image") as images_bar:
        for job in _by_key(jobs, _stage2_keys):
            pipeline = _stage2_pipeline(job, networks)
            strengths = dict(zip(PRIORS, job.options.strengths))
            for result in job.results:
                settings = _stage2_settings(result, strengths, job.options)
                with progress("  stage-2 steps", settings.steps, "step") as steps_bar:
                    result.restored = _restore_one(pipeline, result, settings, job.options,
                                                   lambda done, total: steps_bar.update(1))
                images_bar.update(1)
    networks.release()


def _stage2_pipeline(job: RestoreJob, networks: _Held):
    from ..models.colour_adapter import load_colour_adapter
    from ..models.sdxl_components import load_clip_vision
    from ..models.single_file import load_sdxl
    from .stage2 import Stage2Pipeline

    m, configs = job.models, job.network_configs
    device, dtype = job.options.device, job.options.dtype
    sdxl_key, clip_key, control_key, adapter_key = _stage2_keys(job)
    # SDXL's original VAE overflows in fp16: it stays float32 (load_sdxl's default).
    unet, vae, text_encoders = networks.get(sdxl_key, lambda: load_sdxl(
        m.sdxl, tokenizer_source=m.sdxl_tokenizer, configs=configs.get("sdxl"), device=device, dtype=dtype))

    def load_control():
        if job.public:
            from ..models.union_controlnet import load_union_controlnet
            from .union_control import UnionPriorControl

            return UnionPriorControl(load_union_controlnet(m.union_controlnet, device=device, dtype=dtype,
                                                           config=configs.get("union_controlnet")))
        from ..models.stage2_weights import load_multiprior

        return load_multiprior(m.stage2_controlnet, dtype=dtype).to(device)

    controlnet = networks.get(control_key, load_control)
    adapter = networks.get(adapter_key, lambda: load_colour_adapter(m.colour_adapter, unet.config,
                                                                    dtype=dtype).to(device))
    image_encoder = networks.get(clip_key, lambda: load_clip_vision(m.clip_vision, device=device, dtype=dtype,
                                                                   config=configs.get("clip_vision")))
    return Stage2Pipeline(unet, vae, text_encoders, controlnet, adapter, image_encoder)


def _stage2_settings(result: RestoreResult, strengths: dict[str, float], options: RestoreOptions):
    from .stage2 import DEFAULT_STEPS, Stage2Settings

    return Stage2Settings(prompt=result.recaption or result.caption, negative_prompt=options.negative_prompt,
                          scheduler=options.stage2_scheduler,
                          steps=options.stage2_steps or DEFAULT_STEPS[options.stage2_scheduler], cfg=options.cfg,
                          seed=options.seed, strengths=strengths, adapter_weight=options.adapter_weight,
                          denoise=options.denoise)


def _restore_one(pipeline, result: RestoreResult, settings, options: RestoreOptions, progress) -> torch.Tensor:
    """Stage 2 on one image's bucket canvas (SDXL needs sizes it can halve; priors padded as in stage 1:
    photos and maps by their edges, the skeleton with black), cropped and resized back to I_ir's size. The
    colour adapter sees I_res, or I_ir in the public-weights mode (no stage 1)."""
    plan = plan_resize(*result.cleaned.shape[-2:], mode=options.size_mode)
    images = {"image": result.cleaned, "pose": result.pose_image, "depth": result.depth, "normal": result.normal}
    priors = {name: plan.to_canvas(images[name][None], fill=STAGE2_FILLS[name]) for name in PRIORS
              if images[name] is not None}  # the face pass gives no depth or normal (their strengths are 0)
    colour_source = result.cleaned if options.mode == "public" else result.stage1
    restored = plan.to_canvas(colour_source[None], fill=STAGE2_FILLS["colour"])
    start = None if result.start is None else plan.to_canvas(result.start[None], fill=STAGE2_FILLS["colour"])
    out = pipeline(priors, restored, settings, progress=progress, start=start)
    return plan.from_canvas(out)[0]


def _release() -> None:
    """Hand freed device memory back before the next stage loads its networks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

