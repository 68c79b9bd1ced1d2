"""Command line: `python -m comfyui_diffbody restore INPUT... --out DIR`.

Runs the pipeline without ComfyUI, on one image or a folder, finding model files in a ComfyUI
models folder (or `--models-dir`). Today that is DiffBody's stage 0 (SwinIR cleanup, pose, caption);
the diffusion stages are added as they land. `--tiny` runs everything on generated tiny random
weights: a plumbing check, not a restoration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
REPO_ROOT = Path(__file__).resolve().parent


def default_models_dir() -> Path:
    """ComfyUI's models folder when the pack sits in ComfyUI/custom_nodes/, else ~/ComfyUI/models."""
    if os.environ.get("DIFFBODY_MODELS_DIR"):
        return Path(os.environ["DIFFBODY_MODELS_DIR"])
    if REPO_ROOT.parent.name == "custom_nodes":
        return REPO_ROOT.parent.parent / "models"
    return Path.home() / "ComfyUI" / "models"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m comfyui_diffbody", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    restore = commands.add_parser("restore", help="restore photos of people",
                                  description="Restore photos of people (today: DiffBody stage 0).")
    restore.add_argument("inputs", nargs="+", type=Path, help="image files or folders of images")
    restore.add_argument("--out", type=Path, default=Path("diffbody-output"), help="output folder")
    restore.add_argument("--models-dir", type=Path, default=None,
                         help=f"a ComfyUI-style models folder (default: {default_models_dir()})")
    restore.add_argument("--tiny", action="store_true",
                         help="plumbing check: generate tiny random weights and run on them (output is noise)")
    restore.add_argument("--download", action="store_true",
                         help="download missing known model files from Hugging Face into the models folder")
    restore.add_argument("--upscale", type=float, default=1.0, help="super-resolution factor before cleanup")
    restore.add_argument("--tile-size", type=int, default=512)
    restore.add_argument("--tile-stride", type=int, default=256)
    restore.add_argument("--swinir", default="general_swinir_v1.ckpt", help="SwinIR file in upscale_models/")
    restore.add_argument("--pose-backend", default="dwpose", choices=["dwpose", "openpose", "mediapipe"])
    restore.add_argument("--no-caption", action="store_true", help="skip LLaVA captioning")
    restore.add_argument("--caption-model", default="llava-1.5-7b-hf", help="LLaVA folder in LLM/")
    restore.add_argument("--seed", type=int, default=0)
    restore.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    return parser


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
    return found


def required_files(args) -> list[tuple[str, str]]:
    """(file name, folder) of every model file the chosen options need."""
    from .pipelines.pose.backends import MODEL_FILES

    needed = [(args.swinir, "upscale_models")]
    needed += [(name, "diffbody_pose") for name in MODEL_FILES[args.pose_backend].values() if name]
    if not args.no_caption:
        needed.append((args.caption_model, "LLM"))
    return needed


def resolve_files(args, models_dir: Path) -> dict[str, str]:
    """{file name: path}; with missing files, print each with where to get it and exit 2."""
    from .models.files import default_dir, download, find_file, missing_message

    paths, missing = {}, []
    for name, folder in required_files(args):
        directory = default_dir(str(models_dir), folder)
        path = find_file(name, [directory])
        if path is None and args.download:
            path = download(name, directory)
        if path is None:
            missing.append(missing_message(name, folder, [directory], fetch_hint="Or pass --download to fetch it."))
        else:
            paths[name] = path
    if missing:
        print(f"Missing model files ({len(missing)}); models folder: {models_dir}\n", file=sys.stderr)
        print("\n\n".join(missing), file=sys.stderr)
        print("\nPass --models-dir if your ComfyUI models folder is elsewhere; --tiny runs a plumbing check on "
              "tiny random weights.", file=sys.stderr)
        raise SystemExit(2)
    return paths


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def restore(args) -> int:
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from .models.swinir import load_swinir
    from .pipelines.image import chw_to_uint8, uint8_to_chw
    from .pipelines.pose.backends import MODEL_FILES, make_estimator
    from .pipelines.stage0 import Stage0Options, run_stage0

    images = collect_images(args.inputs)
    with tempfile.TemporaryDirectory(prefix="diffbody-tiny-") as tiny_dir:
        if args.tiny:
            from .testing.tiny import build_models_dir

            print("--tiny: generating tiny random weights; the output checks the plumbing, it is not a restoration.")
            build_models_dir(tiny_dir)
        models_dir = Path(tiny_dir) if args.tiny else (args.models_dir or default_models_dir())
        paths = resolve_files(args, models_dir)
        device = pick_device(args.device)
        swinir = load_swinir(paths[args.swinir])
        roles = {role: paths[name] for role, name in MODEL_FILES[args.pose_backend].items() if name}
        estimator = make_estimator(args.pose_backend, roles, device=str(device))
        captioner = None
        if not args.no_caption:
            from .pipelines.caption import LlavaCaptioner

            captioner = LlavaCaptioner.load(paths[args.caption_model], device=str(device))
        options = Stage0Options(upscale=args.upscale, tile_size=args.tile_size, tile_stride=args.tile_stride,
                                seed=args.seed)
        args.out.mkdir(parents=True, exist_ok=True)
        for path in tqdm(images, desc="restoring", unit="image"):
            rgb = np.asarray(Image.open(path).convert("RGB"))
            result = run_stage0(uint8_to_chw(rgb).unsqueeze(0), swinir=swinir, pose_estimator=estimator,
                                captioner=captioner, options=options, device=device)
            stem = args.out / path.stem
            Image.fromarray(chw_to_uint8(result.cleaned[0])).save(f"{stem}_ir.png")
            Image.fromarray(chw_to_uint8(result.pose_images[0])).save(f"{stem}_pose.png")
            Path(f"{stem}_pose.json").write_text(json.dumps(result.keypoints[0]))
            if result.captions:
                Path(f"{stem}_caption.txt").write_text(result.captions[0] + "\n")
    print(f"Wrote stage-0 results for {len(images)} image(s) to {args.out}: *_ir.png (SwinIR cleanup), "
          "*_pose.png and *_pose.json (pose), *_caption.txt (caption). The diffusion stages (1 and 2) are not "
          "in this release yet.")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "restore":
        return restore(args)
    return 2
