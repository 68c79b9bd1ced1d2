"""Training-data preparation: `python -m comfyui_diffbody.training.prepare_data INPUT_DIR DATA_ROOT`.

Data preparation. Training needs each high-quality photo of a person together with its annotations.
This command walks INPUT_DIR (sub-folders included) and, for every image, centre-crops it to the aspect
ratio of the nearest of the paper's five resolution buckets (width x height 512x512, 512x768, 512x1024,
768x512, 1024x512) and resizes it to that bucket. It then writes the pose (the skeleton image and its
keypoints, from the pack's own stage-0 pose code), the depth (Depth Anything V2 or DPT-MiDaS, near =
bright), the surface normals (Marigold, or computed from the depth; ControlNet 1.1 colours: red =
facing left, green = up, blue = towards the camera) and a LLaVA caption (`--no-caption` leaves it
empty). Everything goes into DATA_ROOT, which `training/dataset.py` reads::

    DATA_ROOT/images/<id>.png  pose/<id>.png  keypoints/<id>.json  depth/<id>.png  normal/<id>.png
    DATA_ROOT/manifest.jsonl   (manifest-<i>-of-<n>.jsonl with --num-shards n --shard-index i)

Each manifest line is one JSON object: {"id", "width", "height" (the bucket; every file of the item
is exactly that size), "image", "pose", "keypoints", "depth", "normal" (paths relative to DATA_ROOT),
"caption", "source" (the original path relative to INPUT_DIR)}. depth is an 8-bit grey PNG, normal an
8-bit RGB PNG. The command can be stopped and restarted at any time: an item's files are written
atomically and its manifest line last, items already in a manifest are skipped, and an item cut off
half-way is done again. Several machines can share the work with `--num-shards N --shard-index i`
(each image belongs to exactly one shard, decided by its path), writing into the same DATA_ROOT.
Model files are looked up in a ComfyUI models folder (`--models-dir`; `--download` fetches the public
ones); `--tiny` runs on generated tiny random weights as a plumbing check (the annotations are noise).

Ids: the source path relative to INPUT_DIR without its suffix, characters other than letters, digits,
'.', '_' and '-' replaced by '_', then '-' and 8 hex digits of the path's SHA-1 (so 'a.jpg' and
'a.png', or 'x/y.png' and 'x_y.png', stay apart). Unreadable images are reported and skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
SUBFOLDERS = {"image": "images", "pose": "pose", "keypoints": "keypoints", "depth": "depth", "normal": "normal"}
DEFAULT_NORMALS = "marigold-normals-v1-1"
MAX_ID_STEM = 80


@dataclass(frozen=True)
class SourceImage:
    path: Path  # absolute
    relative: str  # POSIX path relative to the input folder: the manifest's "source"
    item_id: str


def item_id(relative: str) -> str:
    stem = os.path.splitext(relative)[0]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:MAX_ID_STEM] or "image"
    return f"{safe}-{_digest(relative)[:8]}"


def shard_of(relative: str, num_shards: int) -> int:
    """The shard an image belongs to: from its path alone, so adding images never moves others."""
    return int(_digest(relative)[8:16], 16) % num_shards


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def find_images(input_dir: Path) -> list[SourceImage]:
    """Every image file below `input_dir`, sorted by relative path."""
    found = []
    for root, dirs, files in os.walk(input_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                path = Path(root) / name
                relative = path.relative_to(input_dir).as_posix()
                found.append(SourceImage(path.resolve(), relative, item_id(relative)))
    return sorted(found, key=lambda s: s.relative)


def manifest_name(num_shards: int, shard_index: int) -> str:
    return "manifest.jsonl" if num_shards == 1 else f"manifest-{shard_index}-of-{num_shards}.jsonl"


def done_ids(data_root: Path) -> set[str]:
    """Ids listed in every manifest*.jsonl of `data_root` (a line cut off half-way, e.g. another shard's
    being written right now, is not an item yet)."""
    ids = set()
    for manifest in sorted(data_root.glob("manifest*.jsonl")):
        text = manifest.read_text(encoding="utf-8")
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n") or not line.strip():
                continue
            ids.add(json.loads(line)["id"])
    return ids


def repair_manifest(manifest: Path) -> None:
    """Cut a last line without its newline (a run killed while writing it); that item is redone."""
    if not manifest.exists():
        return
    data = manifest.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(manifest, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def bucket_crop(width: int, height: int) -> tuple[tuple[int, int], tuple[float, float, float, float]]:
    """((bucket width, bucket height), centred crop box (left, top, right, bottom)) for an image of
    width x height: the nearest bucket by aspect ratio, and the largest centred box of its aspect."""
    from ..pipelines.buckets import nearest_bucket

    bucket_h, bucket_w = nearest_bucket(height, width)  # buckets are (H, W)
    if width * bucket_h > height * bucket_w:  # too wide for the bucket: trim the sides
        crop_w, crop_h = height * bucket_w / bucket_h, float(height)
    else:  # too tall: trim top and bottom
        crop_w, crop_h = float(width), width * bucket_h / bucket_w
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    return (bucket_w, bucket_h), (left, top, left + crop_w, top + crop_h)


def load_bucketed(path: Path):
    """The photo upright (EXIF orientation applied), RGB, cropped and resized to its bucket: a PIL image."""
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    (width, height), box = bucket_crop(*image.size)
    return image.resize((width, height), Image.Resampling.LANCZOS, box=box)


# -- writing -------------------------------------------------------------------------------------------

def atomic_write(path: Path, write) -> None:
    """write(file object) into a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def save_png(path: Path, array) -> None:
    """(H, W) uint8 -> grey PNG, (H, W, 3) uint8 -> RGB PNG."""
    import numpy as np
    from PIL import Image

    atomic_write(path, lambda f: Image.fromarray(np.ascontiguousarray(array)).save(f, format="PNG"))


def _append_line(manifest: Path, entry: dict) -> None:
    with open(manifest, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


# -- annotation ----------------------------------------------------------------------------------------

class Annotator:
    """The loaded pose estimator, depth/normal estimator and (optional) captioner."""

    def __init__(self, pose_estimator, priors, captioner, *, device, seed: int):
        self.pose_estimator, self.priors, self.captioner = pose_estimator, priors, captioner
        self.device, self.seed = device, seed

    def annotate(self, source: SourceImage, data_root: Path) -> dict:
        """Write every file of one item and return its manifest entry."""
        import numpy as np

        from ..pipelines.image import chw_to_uint8, uint8_to_chw
        from ..pipelines.pose.backends import estimate_and_draw
        from ..pipelines.prompts import DEFAULT_CAPTION_PROMPT

        photo = np.asarray(load_bucketed(source.path))
        height, width = photo.shape[:2]
        image = uint8_to_chw(photo).unsqueeze(0)
        pose_images, frames = estimate_and_draw(self.pose_estimator, image)
        depth, normal = self.priors.estimate(image)
        caption = ""
        if self.captioner is not None:
            [caption] = self.captioner.caption(image, prompt=DEFAULT_CAPTION_PROMPT, max_new_tokens=77,
                                               seed=self.seed, device=self.device)
        entry = {"id": source.item_id, "width": width, "height": height}
        entry.update({field: f"{folder}/{source.item_id}{'.json' if field == 'keypoints' else '.png'}"
                      for field, folder in SUBFOLDERS.items()})
        entry.update({"caption": caption, "source": source.relative})
        save_png(data_root / entry["image"], photo)
        save_png(data_root / entry["pose"], chw_to_uint8(pose_images[0]))
        save_png(data_root / entry["depth"], chw_to_uint8(depth[0])[..., 0])  # grey: one channel
        save_png(data_root / entry["normal"], chw_to_uint8(normal[0]))
        atomic_write(data_root / entry["keypoints"], lambda f: f.write(json.dumps(frames[0]).encode("utf-8")))
        return entry


def load_annotator(paths: dict[str, str | None], args, device) -> Annotator:
    from ..models.devices import pick_dtype
    from ..pipelines.caption import LlavaCaptioner
    from ..pipelines.depth_normal import load_depth_normal_estimator
    from ..pipelines.pose.backends import make_estimator

    dtype = pick_dtype("auto", device)
    pose_files = {role: paths[role] for role in pose_roles(args.pose_backend)}
    pose_estimator = make_estimator(args.pose_backend, pose_files, device=str(device))
    priors = load_depth_normal_estimator(paths["depth"], paths["normal"], device=device, dtype=dtype,
                                         normal_steps=args.marigold_steps, seed=args.seed)
    captioner = None if args.no_caption else LlavaCaptioner.load(paths["caption"], device=str(device))
    return Annotator(pose_estimator, priors, captioner, device=device, seed=args.seed)


# -- model files ---------------------------------------------------------------------------------------

def pose_roles(backend: str) -> list[str]:
    from ..pipelines.pose.backends import MODEL_FILES

    return [role for role, name in MODEL_FILES[backend].items() if name]


def required_files(args) -> dict[str, tuple[str, str] | None]:
    """role -> (file or folder name, models folder); None for a role this run does not use."""
    from ..pipelines.depth_normal import FROM_DEPTH
    from ..pipelines.pose.backends import MODEL_FILES

    files: dict[str, tuple[str, str] | None] = {
        role: (MODEL_FILES[args.pose_backend][role], "diffbody_pose") for role in pose_roles(args.pose_backend)}
    files["depth"] = (args.depth_model, "diffbody_priors")
    files["normal"] = None if args.normal_source == FROM_DEPTH else (args.normal_source, "diffbody_priors")
    files["caption"] = None if args.no_caption else (args.caption_model, "LLM")
    return files


def resolve_files(args, models_dir: Path) -> dict[str, str | None]:
    """role -> path (None: a role switched off); with missing files, print each with where to get it and exit 2."""
    from ..models.errors import MissingModelFiles
    from ..models.files import resolve_model_files

    wanted = required_files(args)
    try:
        found = resolve_model_files([w for w in wanted.values() if w is not None], models_dir,
                                    download_missing=args.download)
    except MissingModelFiles as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
    return {role: None if w is None else found[w[0]] for role, w in wanted.items()}


# -- command line ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from ..models.files import default_models_dir
    from ..models.depth_estimator import DEFAULT_DEPTH_MODEL

    parser = argparse.ArgumentParser(
        prog="python -m comfyui_diffbody.training.prepare_data",
        description="Annotate a folder of high-quality photos of people for DiffBody training (pose, depth, "
                    "normals, caption) into the training-data layout; resumable and shardable.")
    parser.add_argument("input_dir", type=Path, help="folder of photos (sub-folders included)")
    parser.add_argument("data_root", type=Path, help="output folder (DATA_ROOT)")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help=f"a ComfyUI-style models folder (default: {default_models_dir()})")
    parser.add_argument("--download", action="store_true",
                        help="download missing model files that have a public source into the models folder")
    parser.add_argument("--tiny", action="store_true",
                        help="plumbing check: generate tiny random weights and annotate with them (noise)")
    parser.add_argument("--pose-backend", default="dwpose", choices=["dwpose", "openpose", "mediapipe"])
    parser.add_argument("--depth-model", default=DEFAULT_DEPTH_MODEL,
                        help="depth model folder in diffbody/priors/ (Depth-Anything-V2-*-hf or dpt-hybrid-midas)")
    parser.add_argument("--normal-source", default=DEFAULT_NORMALS,
                        help="a Marigold normals folder in diffbody/priors/, or 'from depth'")
    parser.add_argument("--marigold-steps", type=int, default=None, help="default: the Marigold model's own")
    parser.add_argument("--no-caption", action="store_true", help="write empty captions (no LLaVA)")
    parser.add_argument("--caption-model", default="llava-1.5-7b-hf", help="LLaVA folder in LLM/")
    parser.add_argument("--num-shards", type=int, default=1, help="split the images into this many shards")
    parser.add_argument("--shard-index", type=int, default=0, help="which shard this run annotates (0-based)")
    parser.add_argument("--limit", type=int, default=None,
                        help="annotate only the first N images of the shard (those already done count)")
    parser.add_argument("--seed", type=int, default=0, help="seed for Marigold's noise and caption sampling")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    return parser


def check_args(args) -> None:
    if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
        raise SystemExit(f"error: --shard-index must be from 0 to {args.num_shards - 1}, got {args.shard_index}")
    if args.limit is not None and args.limit < 0:
        raise SystemExit(f"error: --limit must not be negative, got {args.limit}")
    if args.marigold_steps is not None and not 1 <= args.marigold_steps <= 1000:
        raise SystemExit(f"error: --marigold-steps must be from 1 to 1000, got {args.marigold_steps}")
    if not args.input_dir.is_dir():
        raise SystemExit(f"error: no such folder: {args.input_dir}")
    if args.data_root.resolve() == args.input_dir.resolve():
        raise SystemExit("error: DATA_ROOT must differ from the input folder")


def main(argv: list[str] | None = None) -> int:
    from ..models.devices import pick_device

    args = build_parser().parse_args(argv)
    check_args(args)
    shard = [s for s in find_images(args.input_dir) if shard_of(s.relative, args.num_shards) == args.shard_index]
    if args.limit is not None:
        shard = shard[:args.limit]
    args.data_root.mkdir(parents=True, exist_ok=True)
    manifest = args.data_root / manifest_name(args.num_shards, args.shard_index)
    repair_manifest(manifest)
    done = done_ids(args.data_root)
    pending = [s for s in shard if s.item_id not in done]
    label = " (plumbing check on tiny random weights: the annotations are noise)" if args.tiny else ""
    print(f"{len(shard)} image(s) in shard {args.shard_index} of {args.num_shards}, {len(shard) - len(pending)} "
          f"already done, {len(pending)} to annotate{label}.")
    if not pending:
        return 0
    with tempfile.TemporaryDirectory(prefix="diffbody-tiny-") as tiny_dir:
        models_dir = _models_dir(args, tiny_dir)
        annotator = load_annotator(resolve_files(args, models_dir), args, pick_device(args.device))
        written, unreadable = _annotate_all(annotator, pending, args.data_root, manifest)
    print(f"Annotated {written} image(s){label} into {args.data_root} ({manifest.name}).")
    if unreadable:
        print(f"Skipped {len(unreadable)} unreadable image(s): " + ", ".join(unreadable), file=sys.stderr)
    return 0


def _models_dir(args, tiny_dir: str) -> Path:
    from ..models.files import default_models_dir

    if not args.tiny:
        return args.models_dir or default_models_dir()
    from ..pipelines.depth_normal import FROM_DEPTH
    from ..testing.tiny import TINY_DEPTH_NAME, TINY_NORMALS_NAME, build_models_dir

    build_models_dir(tiny_dir)
    args.depth_model = TINY_DEPTH_NAME
    if args.normal_source != FROM_DEPTH:
        args.normal_source = TINY_NORMALS_NAME
    return Path(tiny_dir)


def _annotate_all(annotator: Annotator, pending: list[SourceImage], data_root: Path,
                  manifest: Path) -> tuple[int, list[str]]:
    from PIL import UnidentifiedImageError
    from tqdm import tqdm

    written, unreadable = 0, []
    for source in tqdm(pending, desc="annotating", unit="image"):
        try:
            entry = annotator.annotate(source, data_root)
        except (UnidentifiedImageError, OSError) as error:
            if not _is_unreadable_image(source.path):
                raise
            print(f"warning: cannot read {source.relative} ({error}); skipped", file=sys.stderr)
            unreadable.append(source.relative)
            continue
        _append_line(manifest, entry)  # last: the item counts as done only once all its files are in place
        written += 1
    return written, unreadable


def _is_unreadable_image(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError):
        return True
    return False


if __name__ == "__main__":
    raise SystemExit(main())
