"""Write the pictures of the node help pages (js/docs/images/) from code, not by hand.

    python scripts/build_node_docs_images.py

Each picture is what the pack's own code makes of a known input; none claims restoration quality (no
DiffBody weights are public, and the tests' tiny weights are random):
- pose_astronaut.png: scikit-image's `astronaut` photo and the skeleton the pose node's `mediapipe`
  backend draws for it (the one backend whose weights ship in its wheel). mediapipe lives in its own venv
  (scripts/mediapipe_venv.sh), so this runs tests/mediapipe_pose_check.py there, which saves the skeleton.
- normals_sphere.png: the depth of a synthetic hemisphere (near = bright) and the normals that the
  Depth & Normal node's "from depth" source computes from it (pipelines/depth_normal.normals_from_depth),
  which shows the colour convention.
- canvas_bucket.png: a portrait crop of the same photo, and the Stage 2 Canvas node's canvas for it
  (pipelines/buckets.plan_resize: resized to the nearest training bucket, padded by its edges) with the
  skeleton canvas (padded with black).
- group_collage.png: testing/photos.people_collage (four people) with each person the `mediapipe` backend
  finds (tests/mediapipe_pose_check.py --frame) tinted by their mask and framed by their box, as the Crop People
  node cuts them (pipelines/group.py).
The screenshots of the frontend in the same folder come from the browser test: DIFFBODY_UPDATE_SCREENSHOTS=1
$PY -m pytest tests/test_browser.py -k screenshots.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGES_DIR = REPO_ROOT / "js" / "docs" / "images"
GAP = 8  # px of white between the panels of a picture


def side_by_side(panels: list[np.ndarray], height: int) -> Image.Image:
    """HxWx3 uint8 panels scaled to one height and laid out left to right on white."""
    scaled = [Image.fromarray(p).resize((round(p.shape[1] * height / p.shape[0]), height), Image.LANCZOS)
              for p in panels]
    out = Image.new("RGB", (sum(s.width for s in scaled) + GAP * (len(scaled) - 1), height), "white")
    x = 0
    for s in scaled:
        out.paste(s, (x, 0))
        x += s.width + GAP
    return out


def save(image: Image.Image, name: str) -> None:
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    image.save(IMAGES_DIR / name, optimize=True)
    print(f"wrote {IMAGES_DIR / name} ({image.width}x{image.height})")


def mediapipe_skeleton(work: Path) -> np.ndarray:
    """The astronaut's skeleton, drawn by the pack's mediapipe backend in the mediapipe venv."""
    python = subprocess.run([str(REPO_ROOT / "scripts" / "mediapipe_venv.sh")], check=True,
                            capture_output=True, text=True).stdout.strip()
    subprocess.run([python, str(REPO_ROOT / "tests" / "mediapipe_pose_check.py"), "--repo", str(REPO_ROOT),
                    "--save", str(work)], check=True, capture_output=True)
    return np.asarray(Image.open(work / "one_person_skeleton.png").convert("RGB"))


def mediapipe_frame(image: np.ndarray, work: Path) -> dict:
    """The POSE_KEYPOINT frame the pack's mediapipe backend gives an RGB image, in the mediapipe venv."""
    import json

    python = subprocess.run([str(REPO_ROOT / "scripts" / "mediapipe_venv.sh")], check=True,
                            capture_output=True, text=True).stdout.strip()
    Image.fromarray(image).save(work / "image.png")
    out = subprocess.run([python, str(REPO_ROOT / "tests" / "mediapipe_pose_check.py"), "--repo", str(REPO_ROOT),
                          "--frame", str(work / "image.png")], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def group_overlay(image: np.ndarray, frame: dict) -> np.ndarray:
    """Each person of the frame tinted by their Crop People mask, their box drawn, in one colour per person."""
    import cv2

    from comfyui_diffbody.pipelines.group import GroupCrops, find_regions, image_masks

    crops = find_regions([frame], image.shape[:2])
    out = image.astype(np.float32)
    colours = [(255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0)]
    for region, colour in zip(crops.regions, colours * len(crops.regions)):
        mask = image_masks(GroupCrops(crops.image_size, (region,), mask=crops.mask))[0][..., None] * 0.45
        out = out * (1 - mask) + np.float32(colour) * mask
    out = out.round().astype(np.uint8)
    for region, colour in zip(crops.regions, colours * len(crops.regions)):
        top, left, h, w = region.box
        cv2.rectangle(out, (left + 1, top + 1), (left + w - 2, top + h - 2), colour, 2)
    return out


def hemisphere_depth(size: int = 160) -> torch.Tensor:
    """(1,1,size,size) inverse depth of a hemisphere on a flat background: near = bright."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    radius = 0.8
    height = (radius ** 2 - x ** 2 - y ** 2).clamp(min=0).sqrt()
    return (0.2 + 0.8 * height / radius).view(1, 1, size, size)


def to_uint8(chw: torch.Tensor) -> np.ndarray:
    """(C,H,W) in 0..1 -> HxWx3 uint8."""
    array = (chw.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> (1,3,H,W) float in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].float() / 255


def main() -> None:
    from skimage import data

    from comfyui_diffbody.pipelines.buckets import STAGE2_FILLS, plan_resize
    from comfyui_diffbody.pipelines.depth_normal import normals_from_depth

    from comfyui_diffbody.testing.photos import people_collage

    photo = data.astronaut()
    collage = people_collage()
    with tempfile.TemporaryDirectory() as work:
        skeleton = mediapipe_skeleton(Path(work))
        save(side_by_side([group_overlay(collage, mediapipe_frame(collage, Path(work)))], 240), "group_collage.png")
    save(side_by_side([photo, skeleton], 256), "pose_astronaut.png")

    depth = hemisphere_depth()
    save(side_by_side([to_uint8(depth[0]), to_uint8(normals_from_depth(depth)[0])], 160), "normals_sphere.png")

    crop = (slice(0, 512), slice(80, 380))  # 512x300, portrait: its nearest bucket is 768x512 (H, W)
    plan = plan_resize(512, 300, "bucket")
    image_canvas = plan.to_canvas(as_tensor(photo[crop]), STAGE2_FILLS["image"])[0]
    pose_canvas = plan.to_canvas(as_tensor(skeleton[crop]), STAGE2_FILLS["pose"])[0]
    save(side_by_side([photo[crop], to_uint8(image_canvas), to_uint8(pose_canvas)], 256), "canvas_bucket.png")


if __name__ == "__main__":
    main()
