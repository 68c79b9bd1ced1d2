"""Command line: `python -m comfyui_diffbody restore INPUT... --out DIR`.

Runs the whole DiffBody pipeline without ComfyUI (pipelines/restore.py: stage 0 -> stage 1 ->
re-caption -> stage 2) on one image or a folder, finding model files in a ComfyUI models folder (or
`--models-dir`); `--stage0-only` stops after stage 0. `--mode public` needs no DiffBody weights: stage 0 ->
depth/normal estimators -> stage 2 with ControlNet-Union SDXL and IP-Adapter Plus XL. `--tiny` runs
everything on generated tiny random weights: a plumbing check, not a restoration. Under `accelerate launch`
(one process per GPU) each process restores its share of the inputs; inputs whose outputs are all there are
skipped, so a stopped run resumes.

`python -m comfyui_diffbody evaluate HQ_FOLDER --out DIR` scores methods on the paper's Table-1 degradations
(evaluation/; the pipelines built here with the restore options).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .models.files import default_models_dir
from .pipelines.presets import (FACE_DENOISE, FAST, GLOBAL_PASSES, MODES, PERSON_CONTEXT, PUBLIC_DEPTH_MODEL,
                               PUBLIC_NORMAL_SOURCE)

if TYPE_CHECKING:
    import torch

# A plumbing check needs few steps; --stage1-steps / --stage2-steps still override it.
TINY_STEPS = 2
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
FROM_DEPTH = "from depth"  # pipelines/depth_normal.py's name for normals computed from the depth


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m comfyui_diffbody", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    restore = commands.add_parser("restore", help="restore photos of people",
                                  description="Restore photos of people with DiffBody (stage 0, 1 and 2; or, with "
                                              "--mode public, from public weights only).")
    restore.add_argument("inputs", nargs="+", type=Path, help="image files or folders of images")
    restore.add_argument("--out", type=Path, default=Path("diffbody-output"), help="output folder")
    restore.add_argument("--mode", default="diffbody", choices=MODES,
                         help="diffbody: stages 0, 1 and 2 with DiffBody's weights (the paper's); public: no DiffBody "
                              "weights - depth/normal estimators instead of stage 1, ControlNet-Union SDXL and "
                              "IP-Adapter Plus XL in stage 2 (an approximation from public parts)")
    restore.add_argument("--tiny", action="store_true",
                         help="plumbing check: generate tiny random weights and run on them (output is noise); "
                              f"steps default to {TINY_STEPS} per stage, and every prior is saved (--save-priors) "
                              "to show each stage ran")
    restore.add_argument("--stage0-only", action="store_true",
                         help="run only stage 0 (SwinIR cleanup, pose, caption)")
    restore.add_argument("--save-priors", action="store_true",
                         help="also write the intermediate results: *_ir, *_pose, *_stage1 (I_res; not in public "
                              "mode), *_depth, *_normal, *_caption.txt")
    restore.add_argument("--upscale", type=float, default=None,
                         help="super-resolution factor before cleanup (default: the mode's, 1: the photo's own size)")
    restore.add_argument("--chunk-size", type=int, default=0,
                         help="restore and write this many images at a time (each chunk loads the models again), "
                              "so a stopped run keeps the chunks it finished; 0: all of them at once")
    _add_per_person_arguments(restore)
    _add_pipeline_arguments(restore)
    _add_evaluate_command(commands)
    return parser


def _add_per_person_arguments(restore: argparse.ArgumentParser) -> None:
    group = restore.add_argument_group("group photos (pipelines/per_person.py)")
    group.add_argument("--per-person", action="store_true",
                       help="restore every person found by the pose model as a crop of their own (their own "
                            "skeleton, caption and priors, at a training bucket's size) and paste each back with a "
                            "mask that follows the person; writes *_people.json and every crop "
                            "(*_person<k>_crop.png, *_person<k>_restored.png)")
    group.add_argument("--global-pass", default="full", choices=GLOBAL_PASSES,
                       help="--per-person: what restores the rest of the picture: full (the whole pipeline on the "
                            "picture) or swinir (stage 0's cleanup alone, faster)")
    group.add_argument("--face-pass", action="store_true",
                       help="--per-person: then run stage 2 again on each face, at 512x512, from the pasted "
                            "picture with --face-denoise, guided by the face in I_ir, and blend it back "
                            "(writes *_face<k>_restored.png)")
    group.add_argument("--face-denoise", type=float, default=FACE_DENOISE,
                       help="--face-pass: how much of the face stage 2 may change (0..1; low keeps the face)")
    group.add_argument("--person-context", type=float, default=PERSON_CONTEXT,
                       help="--per-person: context around each person, a fraction of their longer side")


def _add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """The models and settings of the pipelines, shared by `restore` and `evaluate`."""
    parser.add_argument("--models-dir", type=Path, default=None,
                        help=f"a ComfyUI-style models folder (default: {default_models_dir()})")
    parser.add_argument("--download", action="store_true",
                        help="download missing model files that have a public source into the models folder")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--tile-stride", type=int, default=256)
    parser.add_argument("--swinir", default="general_swinir_v1.ckpt", help="SwinIR file in upscale_models/")
    parser.add_argument("--pose-backend", default="dwpose", choices=["dwpose", "openpose", "mediapipe"])
    parser.add_argument("--xinsir-sticks", action=argparse.BooleanOptionalAction, default=None,
                        help="draw the pose skeleton as xinsir's ControlNets expect it, the limbs wider on larger "
                             "images (comfyui_controlnet_aux's scale_stick_for_xinsr_cn) (default: the mode's, on "
                             "in public for ControlNet-Union, off in diffbody, whose ControlNets learnt the pack's "
                             "own drawing)")
    parser.add_argument("--no-caption", action="store_true", help="skip LLaVA captioning (empty prompts)")
    parser.add_argument("--no-recaption", action="store_true",
                        help="keep stage 0's caption for stage 2 instead of re-captioning I_res (the paper's)")
    parser.add_argument("--caption-model", default="llava-1.5-7b-hf", help="LLaVA folder in LLM/")
    parser.add_argument("--sdxl", default=None,
                        help="SDXL base: a diffusers folder in diffusers/, a single file in checkpoints/ or a path "
                             f"(default: {DIFFUSION_FILES['sdxl'][0]} in diffusers/, else {SINGLE_FILES['sdxl']} "
                             "in checkpoints/)")
    parser.add_argument("--sd21", default=None,
                        help="SD 2.1-base (stage 1's VAE and text encoder), found like --sdxl (default: "
                             f"{DIFFUSION_FILES['sd21'][0]} in diffusers/, else {SINGLE_FILES['sd21']} in checkpoints/)")
    parser.add_argument("--clip-tokenizer", type=Path, default=None,
                        help="single-file checkpoints hold no tokenizer: a folder with CLIP's vocab.json and "
                             "merges.txt, or a diffusers folder (default: ComfyUI's comfy/sd1_tokenizer/ of the "
                             "ComfyUI the pack is installed in, or of $DIFFBODY_COMFYUI_DIR)")
    parser.add_argument("--depth-model", default=PUBLIC_DEPTH_MODEL,
                        help="public mode: depth estimator folder in diffbody/priors/ (Depth-Anything-V2-{Small,"
                             "Base,Large}-hf, dpt-hybrid-midas; Small is the Apache-2.0 one)")
    parser.add_argument("--normal-source", default=PUBLIC_NORMAL_SOURCE,
                        help=f"public mode: a Marigold normals folder in diffbody/priors/, or '{FROM_DEPTH}': normals "
                             "from the depth map's slopes (no extra model, coarser)")
    parser.add_argument("--negative-prompt", default="", help="negative prompt for both diffusion stages")
    _add_sampling_arguments(parser)
    parser.add_argument("--strengths", type=float, nargs=4, default=None,
                        metavar=("A1", "A2", "A3", "A4"),
                        help="stage-2 prior strengths for I_ir, I_pose, I_depth, I_normal (default: the mode's, "
                             "diffbody 1 1 1 1, public 1 0.5 0.5 0.5)")
    parser.add_argument("--adapter-weight", type=float, default=None,
                        help="colour adapter weight, 0: off (default: the mode's, diffbody 1.0, public 0.6)")
    parser.add_argument("--seed", type=int, default=None, help="default: the mode's (0)")
    parser.add_argument("--device", default="auto", help="auto (each process's own GPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                        help="auto: float16 on CUDA, float32 on the CPU")


def _add_sampling_arguments(restore: argparse.ArgumentParser) -> None:
    """Working size, speed profile, schedulers, steps and guidance of the two diffusion stages."""
    # Names are checked against the pipelines' lists after parsing (importing them here would load torch
    # for --help).
    restore.add_argument("--size-mode", default="bucket",
                         help="bucket (the paper's training sizes) or native (the image's own size)")
    restore.add_argument("--fast", action="store_true",
                         help=f"speed profile: {FAST.stage1_scheduler} at {FAST.stage1_steps} + {FAST.stage2_steps} "
                              "steps instead of the paper's DDPM 200 + 200, and stage 2 reuses the first caption "
                              "(no re-caption: one LLaVA call fewer per image); the options below still override")
    restore.add_argument("--stage1-scheduler", default=None,
                         help="ddpm (the paper's, the default), ddim, dpmpp_2m or dpmpp_2m_karras")
    restore.add_argument("--stage1-steps", type=int, default=None,
                         help="default: the paper's 200 for ddpm, else the scheduler's usual count")
    restore.add_argument("--stage1-cfg", type=float, default=None, help="default: the mode's (7.5, SD 2.1's usual)")
    restore.add_argument("--stage2-scheduler", default=None,
                         help="ddpm (the paper's, the default), ddim, dpmpp_2m, dpmpp_2m_karras or euler")
    restore.add_argument("--stage2-steps", type=int, default=None,
                         help="default: the paper's 200 for ddpm, else the scheduler's usual count")
    restore.add_argument("--cfg", type=float, default=None,
                         help="stage-2 classifier-free guidance scale (default: the mode's, 5.0)")


def _add_evaluate_command(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="score restorations against the paper's degradations (Table 1)",
        description="Degrade every photo in HQ_FOLDER with the paper's Table-1 presets (seeded), restore each with "
                    "every method, score the results and write a report (metrics.csv, summary.md, plots/, "
                    "sheets/) to --out. A rerun skips what is done.")
    evaluate.add_argument("photos", type=Path, metavar="HQ_FOLDER",
                          help="high-quality photos (with --no-reference: real low-quality photos)")
    evaluate.add_argument("--out", type=Path, default=Path("diffbody-evaluation"), help="output folder")
    evaluate.add_argument("--presets", default="1,2,3,4,5",
                          help="Table-1 rows, comma-separated: 1 blur2_sr4, 2 noise40_sr4, 3 blur2_noise40, "
                               "4 blur2_noise40_sr4, 5 blur2_noise20_sr4_jpeg50")
    evaluate.add_argument("--methods", nargs="+", default=None,
                          help="bicubic, stage0, public, diffbody, sr:FILE, folder:DIR; a pipeline may add settings "
                               "for itself alone: diffbody@adapter_weight=0, diffbody@strengths=1/1/0/1 "
                               "(default: bicubic stage0 public diffbody)")
    evaluate.add_argument("--limit", type=int, default=0, help="only the first N photos (0: all)")
    evaluate.add_argument("--no-reference", action="store_true",
                          help="the photos are real low-quality ones: no degradation, no-reference metrics only")
    evaluate.add_argument("--scale", type=int, default=4,
                          help="with --no-reference: how much the methods enlarge the photos (default 4)")
    evaluate.add_argument("--tiny", action="store_true",
                          help="plumbing check: the pipelines run on tiny random weights (their results are noise); "
                               f"{TINY_STEPS} steps per stage unless given; the metrics' files still come from "
                               "--models-dir")
    _add_pipeline_arguments(evaluate)


def collect_images(inputs: list[Path]) -> list[Path]:
    found = []
    for item in inputs:
        if item.is_dir():
            found += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            found.append(item)
        else:
            raise SystemExit(f"error: no such file or folder: {item}")
    if not found:
        raise SystemExit("error: no images found in " + ", ".join(map(str, inputs)))
    stems = {}
    for path in found:  # outputs are named after the stem: two such inputs would overwrite each other's
        if path.stem in stems:
            raise SystemExit(f"error: {stems[path.stem]} and {path} would both be written as {path.stem}_*; "
                             "rename one or restore them separately")
        stems[path.stem] = path
    return found


# Model files of the diffusion stages: role -> (real name, name written by the tiny factory, folder).
# The tiny factory writes the others under their real names.
DIFFUSION_FILES = {
    "sd21": ("stable-diffusion-2-1-base", "tiny-sd21", "diffusers"),
    "stage1_unet": ("diffbody_stage1_unet.safetensors", None, "diffbody"),
    "stage1_controlnet": ("diffbody_stage1_controlnet.safetensors", None, "diffbody"),
    "sdxl": ("stable-diffusion-xl-base-1.0", "tiny-sdxl", "diffusers"),
    "stage2_controlnet": ("diffbody_stage2_controlnet.safetensors", None, "diffbody"),
    "colour_adapter": ("diffbody_colour_adapter.safetensors", None, "ipadapter"),
    "clip_vision": ("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "tiny_clip_vision.safetensors", "clip_vision"),
}
# The two Stable Diffusion models are also taken as the single file ComfyUI loads from checkpoints/, when their
# diffusers folder is absent: role -> that file's public name.
SINGLE_FILES = {"sd21": "v2-1_512-ema-pruned.safetensors", "sdxl": "sd_xl_base_1.0.safetensors"}
# --mode public: every file has a public source (the depth/normal estimators are added from the options).
PUBLIC_FILES = {
    "sdxl": DIFFUSION_FILES["sdxl"],
    "union_controlnet": ("controlnet-union-sdxl-1.0.safetensors", None, "controlnet"),
    "colour_adapter": ("ip-adapter-plus_sdxl_vit-h.safetensors", None, "ipadapter"),
    "clip_vision": DIFFUSION_FILES["clip_vision"],
}


def diffusion_files(args) -> dict:
    """role -> (file name, folder), or files.Alternatives for SD 2.1 and SDXL, of the files after stage 0; the
    tiny factory's names with --tiny."""
    if args.stage0_only:
        return {}
    table = dict(DIFFUSION_FILES)
    if args.mode == "public":
        table = dict(PUBLIC_FILES, depth_model=(args.depth_model, None, "diffbody_priors"))
        if args.normal_source != FROM_DEPTH:
            table["normal_model"] = (args.normal_source, None, "diffbody_priors")
    entries = {role: ((tiny if args.tiny and tiny else real), folder) for role, (real, tiny, folder) in table.items()}
    for role in [role for role in SINGLE_FILES if role in entries]:
        entries[role] = checkpoint_entry(args, role, entries[role])
    return entries


def checkpoint_entry(args, role: str, default: tuple[str, str]):
    """SD 2.1's or SDXL's entry: --sd21/--sdxl (a name in diffusers/ or checkpoints/, or a path), else the
    diffusers folder, then the single file (with --tiny: the tiny factory's folder)."""
    from .models.files import Alternatives

    given = getattr(args, role)
    if given is not None:
        name = str(Path(given).resolve()) if Path(given).exists() else given  # a path: found wherever it is
        return Alternatives(((name, "diffusers"), (name, "checkpoints")))
    if args.tiny:
        return default
    return Alternatives((default, (SINGLE_FILES[role], "checkpoints")))


def entry_name(entry) -> str:
    """The name a diffusion_files entry resolves under."""
    return entry[0] if isinstance(entry, tuple) else entry.name


def required_files(args) -> list:
    """(file name, folder), or files.Alternatives, of every model file the chosen options need."""
    from .pipelines.pose.backends import MODEL_FILES

    needed = [(args.swinir, "upscale_models")]
    needed += [(name, "diffbody_pose") for name in MODEL_FILES[args.pose_backend].values() if name]
    if not args.no_caption:
        needed.append((args.caption_model, "LLM"))
    return needed + list(diffusion_files(args).values())


def resolve_files(args, models_dir: Path, hint: str = "--stage0-only runs stage 0 alone; ") -> dict[str, str]:
    """{file name: path}; with missing files, print each with where to get it and exit 2."""
    from .models.errors import MissingModelFiles
    from .models.files import resolve_model_files

    try:
        return resolve_model_files(required_files(args), models_dir, download_missing=args.download, hint=hint)
    except MissingModelFiles as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None


def check_choices(args) -> None:
    from .pipelines.buckets import SIZE_MODES
    from .pipelines.stage1 import SCHEDULERS as STAGE1_SCHEDULERS
    from .pipelines.stage2 import SCHEDULERS as STAGE2_SCHEDULERS

    for option, value, allowed in (("--size-mode", args.size_mode, SIZE_MODES),
                                   ("--stage1-scheduler", args.stage1_scheduler, STAGE1_SCHEDULERS),
                                   ("--stage2-scheduler", args.stage2_scheduler, STAGE2_SCHEDULERS)):
        if value is not None and value not in allowed:  # None: the mode's default
            raise SystemExit(f"error: {option} {value!r}: choose one of {', '.join(allowed)}")
    for option, steps in (("--stage1-steps", args.stage1_steps), ("--stage2-steps", args.stage2_steps)):
        if steps is not None and not 1 <= steps <= 1000:
            raise SystemExit(f"error: {option} must be from 1 to 1000, got {steps}")


def model_paths(args, paths: dict[str, str], models_dir: Path):
    from .pipelines.pose.backends import MODEL_FILES
    from .pipelines.restore import ModelPaths

    diffusion = {role: paths[entry_name(entry)] for role, entry in diffusion_files(args).items()}
    return ModelPaths(swinir=paths[args.swinir], pose_backend=args.pose_backend,
                      pose_files={role: paths[name] for role, name in MODEL_FILES[args.pose_backend].items() if name},
                      llava=None if args.no_caption else paths[args.caption_model], **diffusion,
                      **clip_tokenizer_sources(args, models_dir, diffusion))


def clip_tokenizer_sources(args, models_dir: Path, diffusion: dict[str, str]) -> dict[str, str]:
    """ModelPaths' sd21_tokenizer / sdxl_tokenizer for each single-file checkpoint: with --tiny the tiny factory's
    folder of that model (its tiny vocabulary), else --clip-tokenizer, else CLIP's files where models/files.py
    finds them; print where to put them and exit 2 when they are nowhere."""
    from .models.files import clip_tokenizer_dirs, default_dir, find_clip_tokenizer, missing_clip_tokenizer_message

    sources = {}
    for role in [role for role in SINGLE_FILES if role in diffusion]:
        if os.path.isdir(diffusion[role]):
            continue
        if args.tiny:
            source = os.path.join(default_dir(str(models_dir), "diffusers"), DIFFUSION_FILES[role][1])
        else:
            searched = [str(args.clip_tokenizer)] if args.clip_tokenizer else clip_tokenizer_dirs(models_dir)
            source = find_clip_tokenizer(searched) or _diffusers_tokenizers(args.clip_tokenizer)
            if source is None:
                print(missing_clip_tokenizer_message(diffusion[role], searched), file=sys.stderr)
                raise SystemExit(2)
        sources[f"{role}_tokenizer"] = source
    return sources


def _diffusers_tokenizers(folder: Path | None) -> str | None:
    """--clip-tokenizer naming a diffusers folder (its tokenizer/ sub-folders are used as they are)."""
    return str(folder) if folder is not None and (folder / "tokenizer").is_dir() else None


def network_configs(args, models_dir: Path) -> dict[str, dict]:
    """With --tiny, the shapes of the tiny single files, which are not ViT-H-14's, SDXL's and SD 2.1's
    (restore_images' network_configs; a single SDXL or SD 2.1 file given with --sdxl/--sd21 holds the tiny
    factory's folder's networks); none otherwise."""
    configs = {}
    if args.tiny and not args.stage0_only:
        from .models.single_file import SD21_CONFIGS, SDXL_CONFIGS, diffusers_folder_configs
        from .testing.tiny.stage2 import tiny_clip_vision_kwargs
        from .testing.tiny.union import tiny_union_config

        configs["clip_vision"] = tiny_clip_vision_kwargs()
        if args.mode == "public":
            configs["union_controlnet"] = tiny_union_config()
        for role, parts in (("sdxl", tuple(SDXL_CONFIGS)), ("sd21", tuple(SD21_CONFIGS))):
            folder = os.path.join(models_dir, "diffusers", DIFFUSION_FILES[role][1])
            configs[role] = diffusers_folder_configs(folder, parts)
    return configs


def restore_options(args, device):
    """RestoreOptions from the parsed arguments; what the user left out comes from the mode's defaults
    (pipelines/presets.py, the same values the bundled workflows carry)."""
    from .models.devices import pick_dtype
    from .pipelines.presets import MODE_DEFAULTS, with_speed
    from .pipelines.restore import RestoreOptions
    from .pipelines.stage0 import Stage0Options

    preset = with_speed(MODE_DEFAULTS[args.mode], FAST) if args.fast else MODE_DEFAULTS[args.mode]
    recaption = not args.no_recaption and (FAST.recaption if args.fast else True)

    def given_or(value, default):
        return default if value is None else value

    def steps(given: int | None, scheduler: str, preset_scheduler: str, preset_steps: int) -> int | None:
        if given is not None:
            return given
        if args.tiny:
            return TINY_STEPS
        # The preset's step count belongs to its scheduler; another scheduler keeps its own usual count.
        return preset_steps if scheduler == preset_scheduler else None

    stage1_scheduler = given_or(args.stage1_scheduler, preset.stage1_scheduler)
    stage2_scheduler = given_or(args.stage2_scheduler, preset.stage2_scheduler)
    seed = given_or(args.seed, preset.seed)
    return RestoreOptions(
        mode=args.mode, stage0=Stage0Options(upscale=given_or(args.upscale, preset.upscale), tile_size=args.tile_size,
                                             tile_stride=args.tile_stride, seed=seed,
                                             xinsir_sticks=given_or(args.xinsir_sticks, preset.xinsir_sticks)),
        stage0_only=args.stage0_only, recaption=recaption, size_mode=args.size_mode,
        stage1_scheduler=stage1_scheduler,
        stage1_steps=steps(args.stage1_steps, stage1_scheduler, preset.stage1_scheduler, preset.stage1_steps),
        stage1_cfg=given_or(args.stage1_cfg, preset.stage1_cfg),
        stage2_scheduler=stage2_scheduler,
        stage2_steps=steps(args.stage2_steps, stage2_scheduler, preset.stage2_scheduler, preset.stage2_steps),
        cfg=given_or(args.cfg, preset.stage2_cfg), strengths=tuple(given_or(args.strengths, preset.strengths)),
        adapter_weight=given_or(args.adapter_weight, preset.adapter_weight), negative_prompt=args.negative_prompt,
        seed=seed, device=str(device), dtype=pick_dtype(args.dtype, device))


def output_suffixes(args) -> list[str]:
    """What restore writes for every input, after its stem and "_" ("restored.png", "ir.png", ...), the
    captions aside (written only when not empty, before these): an input whose files are all there is
    skipped. Each file is written whole or not at all (atomic_write), so one cut off half-way is redone.
    --per-person also writes every crop, as many as there are people, before these."""
    if getattr(args, "per_person", False):  # faces.json only with --face-pass: a rerun adding it redoes the input
        return ["people.json", *(["faces.json"] if args.face_pass else []), "restored.png"]
    if args.stage0_only:
        return ["ir.png", "pose.png", "pose.json"]
    if not args.save_priors:
        return ["restored.png"]
    stage1 = ["stage1.png"] if args.mode != "public" else []  # no stage 1 in the public-weights mode
    return ["ir.png", "pose.png", "pose.json", *stage1, "depth.png", "normal.png", "restored.png"]


def outputs_exist(args, stem: Path) -> bool:
    return all(Path(f"{stem}_{suffix}").is_file() for suffix in output_suffixes(args))


def save_results(result, stem: Path, args) -> None:
    """<stem>_restored.png; with --save-priors (always with --stage0-only) the intermediate results too. The
    captions first and _restored.png last, each file atomically: a run stopped half-way leaves no file that
    outputs_exist would take for a finished one."""
    from .pipelines.image import chw_to_uint8
    from .training.prepare_data import atomic_write, save_png

    if args.save_priors or args.stage0_only:
        for name, text in (("caption", result.caption), ("recaption", result.recaption)):
            if text:
                atomic_write(Path(f"{stem}_{name}.txt"), lambda f, text=text: f.write(f"{text}\n".encode("utf-8")))
    images = {"restored": result.restored, "ir": result.cleaned, "pose": result.pose_image, "stage1": result.stage1,
              "depth": result.depth, "normal": result.normal}
    for suffix in output_suffixes(args):
        path = Path(f"{stem}_{suffix}")
        if suffix == "pose.json":
            atomic_write(path, lambda f: f.write(json.dumps(result.keypoints).encode("utf-8")))
        else:
            save_png(path, chw_to_uint8(images[suffix.removesuffix(".png")]))


def save_per_person(result, stem: Path, args) -> None:
    """--per-person: every person's I_ir crop and restored crop, the crop data as <stem>_people.json (group.py's
    GroupCrops.to_dict, and each crop's file and caption); with --face-pass every restored face and
    <stem>_faces.json alike; with --save-priors the global pass and I_ir; <stem>_restored.png last."""
    from .pipelines.image import chw_to_uint8
    from .training.prepare_data import atomic_write, save_png

    passes = [("person", "people", result.people, result.person_results)]
    if result.faces is not None:
        passes.append(("face", "faces", result.faces, result.face_results))
    for kind, name, regions, results in passes:
        crops = []
        for k, (index, crop) in enumerate(zip(regions.crop_order(), results)):
            if kind == "person":
                save_png(Path(f"{stem}_person{k}_crop.png"), chw_to_uint8(crop.cleaned))
            save_png(Path(f"{stem}_{kind}{k}_restored.png"), chw_to_uint8(crop.restored))
            crops.append({"region": index, "file": f"{stem.name}_{kind}{k}_restored.png",
                          "caption": crop.recaption or crop.caption})
        data = {name: regions.to_dict(), "crops": crops}
        atomic_write(Path(f"{stem}_{name}.json"), lambda f: f.write(json.dumps(data, indent=1).encode("utf-8")))
    if args.save_priors:
        save_png(Path(f"{stem}_global.png"), chw_to_uint8(result.global_result.restored))
        save_png(Path(f"{stem}_ir.png"), chw_to_uint8(result.global_result.cleaned))
    save_png(Path(f"{stem}_restored.png"), chw_to_uint8(result.restored))


def take_share(items: list, index: int, count: int) -> list:
    """Process `index` of `count`'s share of the inputs: every count-th from its index on, so the shares are
    disjoint, cover every input and differ in size by one at most (all processes see the same list).
    prepare_data's shard_of (by a hash of the path) keeps a manifest's shard fixed as data is added; here
    the outputs themselves say what is done, so the shares can stay even."""
    return items[index::count]


@dataclass(frozen=True)
class Process:
    """This process among those `accelerate launch` (or torchrun) started: one, index 0, without them."""

    index: int
    count: int
    device: "torch.device"

    @property
    def label(self) -> str:
        return f"[process {self.index + 1} of {self.count}] " if self.count > 1 else ""


def this_process(device_name: str) -> Process:
    """accelerate's PartialState: this process's index and count, with gloo between CPU processes (it needs
    cpu=True to see them) and NCCL between GPUs. --device auto takes this process's own GPU under a launcher;
    a named device is used as given."""
    from accelerate import PartialState

    from .models.devices import pick_device

    device = pick_device(device_name)
    state = PartialState(cpu=device.type == "cpu")
    if device_name == "auto" and device.type == "cuda" and state.num_processes > 1:
        device = state.device
    return Process(state.process_index, state.num_processes, device)


def require_accelerate() -> None:
    """accelerate is an extra (ComfyUI does not bring it): without it, say how to get it and exit 2."""
    from .models.errors import MissingDependency
    from .training.loop import require_accelerate as require

    try:
        require("the command line's restore (one process, or one per GPU under `accelerate launch`)")
    except MissingDependency as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None


def restore(args) -> int:
    require_accelerate()
    from accelerate import PartialState
    from accelerate.utils import gather_object

    started = time.perf_counter()
    check_choices(args)
    if args.chunk_size < 0:
        raise SystemExit(f"error: --chunk-size must not be negative, got {args.chunk_size}")
    if args.per_person and args.stage0_only:
        raise SystemExit("error: --per-person restores every person through stages 1-2: not with --stage0-only")
    if not 0 < args.face_denoise <= 1 or args.person_context < 0:
        raise SystemExit(f"error: --face-denoise must be in (0, 1] and --person-context >= 0, got "
                         f"{args.face_denoise} and {args.person_context}")
    args.save_priors = args.save_priors or args.tiny
    image_paths = collect_images(args.inputs)
    with tempfile.TemporaryDirectory(prefix="diffbody-tiny-") as tiny_dir:
        if args.tiny:  # before this_process starts the process group: then save_pretrained writes on rank 0 only
            from .testing.tiny import build_models_dir

            print("--tiny: a plumbing check on tiny random weights; the output is noise, not a restoration.")
            build_models_dir(tiny_dir)
        process = this_process(args.device)
        models_dir = Path(tiny_dir) if args.tiny else (args.models_dir or default_models_dir())
        with PartialState().local_main_process_first():  # --download: one process per machine fetches the files
            models = model_paths(args, resolve_files(args, models_dir), models_dir)
        share = take_share(image_paths, process.index, process.count)
        pending = [path for path in share if not outputs_exist(args, args.out / path.stem)]
        print(f"{process.label}{len(pending)} image(s) to restore, {len(share) - len(pending)} skipped (their "
              f"outputs are already in {args.out}).", flush=True)
        if pending:
            restore_pending(args, pending, models, models_dir, process)
    counts = gather_object([(len(pending), len(share) - len(pending))])  # every process's, on every process
    if process.index == 0:
        restored, skipped = sum(done for done, _ in counts), sum(left for _, left in counts)
        if restored:
            print(summary(args, restored))
        print(throughput(restored, skipped, process.count, time.perf_counter() - started), flush=True)
    # Before exit, as PyTorch asks: once, without it, rank 0 aborted at exit ("terminate called without an active
    # exception") after a tiny run.
    PartialState().destroy_process_group()
    return 0


def restore_pending(args, image_paths: list[Path], models, models_dir: Path, process: Process) -> None:
    """Restore and save `image_paths`, --chunk-size at a time (0: all at once), each input's files written as
    soon as its chunk is done; prints a line per input written."""
    import numpy as np
    from PIL import Image

    from .pipelines.image import uint8_to_chw
    from .pipelines.restore import restore_images

    options, configs = restore_options(args, process.device), network_configs(args, models_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    chunk = args.chunk_size or len(image_paths)
    for start in range(0, len(image_paths), chunk):
        paths = image_paths[start:start + chunk]
        images = [uint8_to_chw(np.asarray(Image.open(p).convert("RGB"))).unsqueeze(0) for p in paths]
        if args.per_person:
            from .pipelines.per_person import PerPersonOptions, restore_per_person

            per_person = PerPersonOptions(context=args.person_context, global_pass=args.global_pass,
                                          face_pass=args.face_pass, face_denoise=args.face_denoise)
            for path, result in zip(paths, restore_per_person(images, models, options, per_person,
                                                              network_configs=configs)):
                save_per_person(result, args.out / path.stem, args)
                print(f"{process.label}wrote {path.stem}_* from {path}: {len(result.person_results)} "
                      f"person(s){f', {len(result.face_results)} face(s)' if args.face_pass else ''}", flush=True)
            continue
        for path, result in zip(paths, restore_images(images, models, options, network_configs=configs)):
            save_results(result, args.out / path.stem, args)
            print(f"{process.label}wrote {path.stem}_* from {path}", flush=True)


def throughput(restored: int, skipped: int, processes: int, seconds: float) -> str:
    rate = f": {restored / seconds * 60:.2f} image(s) per minute" if restored else ""
    on = f" on {processes} processes" if processes > 1 else ""
    return (f"Restored {restored} image(s), skipped {skipped} whose outputs were already there, in {seconds:.1f} s"
            f"{on}{rate}.")


def summary(args, count: int) -> str:
    label = " (plumbing check on tiny random weights)" if args.tiny else ""
    if args.stage0_only:
        return (f"Wrote stage-0 results{label} for {count} image(s) to {args.out}: *_ir.png (SwinIR cleanup), "
                "*_pose.png and *_pose.json (pose), *_caption.txt (caption).")
    written = "*_restored.png"
    if args.per_person:
        written += (", every person's crop *_person<k>_crop.png and *_person<k>_restored.png, the crop data "
                    "*_people.json" + (", every face *_face<k>_restored.png and *_faces.json" if args.face_pass else "")
                    + (", *_ir.png and *_global.png (the global pass)" if args.save_priors else ""))
    elif args.save_priors and args.mode == "public":
        written += ", priors *_ir.png, *_pose.png/.json, *_depth.png, *_normal.png (estimated) and *_caption.txt"
    elif args.save_priors:
        captions = "*_caption.txt" if args.no_recaption or args.fast else "*_caption.txt and *_recaption.txt"
        written += f", priors *_ir.png, *_pose.png/.json, *_stage1.png (I_res), *_depth.png, *_normal.png, {captions}"
    mode = " (public-weights mode)" if args.mode == "public" else ""
    return f"Wrote DiffBody results{mode}{label} for {count} image(s) to {args.out}: {written}."


# -- evaluate ----------------------------------------------------------------------------------------------

def evaluate(args) -> int:
    """`evaluate`: evaluation/run.py's steps with the methods built here (the pipelines' from the restore
    command's options); the tiny models folder and each method's networks are made only when some result
    is missing."""
    from .evaluation.methods import DEFAULT_METHODS, MethodError, parse_methods
    from .evaluation.report import pyplot, write_report
    from .models.errors import MissingDependency
    from .evaluation.run import EvalConfig, prepare_cases, restore_missing, score_missing
    from .models.devices import pick_device

    check_choices(args)
    device = pick_device(args.device)
    try:
        pyplot()  # before any work: the report's plots need matplotlib
    except MissingDependency as error:
        raise SystemExit(f"error: {error}") from None
    try:
        specs = parse_methods(args.methods or list(DEFAULT_METHODS))
        config = EvalConfig(photos=args.photos, out=args.out, presets=parse_presets(args.presets), limit=args.limit,
                            no_reference=args.no_reference, scale=args.scale, device=str(device))
        with tempfile.TemporaryDirectory(prefix="diffbody-tiny-") as tiny_dir:
            models_dir = _ModelsDir(args, Path(tiny_dir))
            methods = [evaluation_method(spec, args, models_dir, device) for spec in specs]
            cases = prepare_cases(config)
            written = restore_missing(config, methods, cases)
            scorer = evaluation_scorer(args, args.models_dir or default_models_dir(), device)
            rows = score_missing(config, methods, cases, scorer)
    except MethodError as error:
        raise SystemExit(f"error: {error}") from None
    report = write_report(config, methods, cases, rows)
    print(f"Restored {sum(written.values())} image(s) ({len(cases)} photo x preset case(s), {len(methods)} "
          f"method(s)); report in {report}.")
    return 0


def parse_presets(text: str) -> tuple[str, ...]:
    """--presets "1,3" -> the names of Table-1 rows 1 and 3 (training/degradations.py's PRESETS, in order)."""
    from .training.degradations import PRESETS

    names = list(PRESETS)
    try:
        rows = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        rows = []
    if not rows or any(not 1 <= row <= len(names) for row in rows):
        raise SystemExit(f"error: --presets {text!r}: comma-separated Table-1 rows from 1 to {len(names)}: "
                         + ", ".join(f"{i} {name}" for i, name in enumerate(names, 1)))
    return tuple(names[row - 1] for row in dict.fromkeys(rows))


class _ModelsDir:
    """The models folder, made on first use: with --tiny the tiny factory writes it then (a rerun with every
    result there writes nothing)."""

    def __init__(self, args, tiny_dir: Path):
        self.args, self.tiny_dir, self.ready = args, tiny_dir, False

    def __call__(self) -> Path:
        if not self.args.tiny:
            return self.args.models_dir or default_models_dir()
        if not self.ready:
            from .testing.tiny import build_models_dir

            print("--tiny: the pipelines run on tiny random weights; their results are noise, not restorations.")
            build_models_dir(str(self.tiny_dir))
            self.ready = True
        return self.tiny_dir


def evaluation_method(spec, args, models_dir: _ModelsDir, device):
    from .evaluation.methods import bicubic_method, folder_method, sr_method

    if spec.kind == "bicubic":
        return bicubic_method(spec)
    if spec.kind == "sr":
        return sr_method(spec, device)
    if spec.kind == "folder":
        return folder_method(spec)
    method_args = pipeline_method_args(spec, args)
    check_choices(method_args)
    return _pipeline_method(spec, method_args, models_dir, device)


def pipeline_method_args(spec, args) -> argparse.Namespace:
    """The restore command's arguments for a pipeline method: its mode, stage 0 alone for `stage0` (SwinIR and
    pose, no caption), upscale 1 (it is fed the LQ at the photo's size), the entry's own settings on top."""
    method_args = argparse.Namespace(**vars(args))
    method_args.mode = "diffbody" if spec.kind == "stage0" else spec.kind
    method_args.stage0_only = spec.kind == "stage0"
    method_args.no_caption = args.no_caption or spec.kind == "stage0"
    method_args.upscale, method_args.save_priors = 1.0, False
    for name, value in spec.settings.items():
        setattr(method_args, name, value)
    return method_args


def _pipeline_method(spec, method_args, models_dir: _ModelsDir, device):
    from .evaluation.methods import Method

    def make_job(images):
        from .pipelines.restore import RestoreJob

        folder = models_dir()
        hint = f"leave '{spec.text}' out of --methods to evaluate the others; "
        models = model_paths(method_args, resolve_files(method_args, folder, hint), folder)
        return RestoreJob(images, models, restore_options(method_args, device), network_configs(method_args, folder))

    return Method(spec, make_job=make_job)


def evaluation_scorer(args, models_dir: Path, device):
    """The metrics: the pixel ones, and the neural ones whose files are in diffbody/metrics/ of the models
    folder (--models-dir, also with --tiny: the metrics' networks are real ones, only the pipelines are tiny)."""
    from .evaluation.neural import neural_metrics
    from .evaluation.scoring import Scorer

    return Scorer(*neural_metrics(models_dir, download=args.download, device=str(device)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "restore":
        return restore(args)
    if args.command == "evaluate":
        return evaluate(args)
    return 2
