"""A tiny training folder in the layout the data-preparation command writes (training/dataset.py).

Each item is a synthetic figure: a stick person of thick limbs and a round head on a coloured
background, drawn from 18 OpenPose keypoints that vary per item (position, arm and leg angles,
colours). Its pose image is drawn with the pack's own skeleton drawing, its depth is the figure's
silhouette (near = bright, the body rounder towards its middle) and its normal map is derived from
that depth, so the four images of an item agree with each other as real annotations would.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np

# Scaled-down versions of the paper's buckets, (height, width): square, portrait, landscape.
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (128, 64))
CLOTHES = ("red", "blue", "green", "yellow", "white", "black", "orange", "purple")
_COLOURS = {"red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 160, 70), "yellow": (220, 200, 50),
            "white": (235, 235, 235), "black": (30, 30, 30), "orange": (230, 130, 30), "purple": (130, 50, 160)}
_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
          (2, 8), (5, 11), (8, 11), (0, 1))


def _keypoints(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(18, 2) OpenPose-order keypoints of a standing figure filling most of the canvas."""
    unit = min(height / 8.0, width / 3.2)
    cx = width / 2 + rng.uniform(-0.1, 0.1) * width
    top = height * 0.1 + rng.uniform(0, 0.05) * height
    neck = np.array([cx, top + 1.2 * unit])
    xy = np.zeros((18, 2))
    xy[0] = [cx, top + 0.5 * unit]
    xy[1] = neck
    for side, sign in ((2, -1), (5, 1)):  # right shoulder is on the image's left
        shoulder = neck + [sign * 0.7 * unit, 0.1 * unit]
        angle = math.radians(rng.uniform(10, 80))
        elbow = shoulder + 1.1 * unit * np.array([sign * math.sin(angle), math.cos(angle)])
        wrist = elbow + 1.0 * unit * np.array([sign * math.sin(angle * 0.6), math.cos(angle * 0.6)])
        xy[side], xy[side + 1], xy[side + 2] = shoulder, elbow, wrist
    for hip_index, sign in ((8, -1), (11, 1)):
        hip = neck + [sign * 0.45 * unit, 2.6 * unit]
        spread = math.radians(rng.uniform(0, 20))
        knee = hip + 1.6 * unit * np.array([sign * math.sin(spread), math.cos(spread)])
        ankle = knee + 1.5 * unit * np.array([sign * math.sin(spread * 0.5), math.cos(spread * 0.5)])
        xy[hip_index], xy[hip_index + 1], xy[hip_index + 2] = hip, knee, ankle
    xy[14], xy[15] = xy[0] + [-0.15 * unit, -0.1 * unit], xy[0] + [0.15 * unit, -0.1 * unit]
    xy[16], xy[17] = xy[0] + [-0.3 * unit, 0], xy[0] + [0.3 * unit, 0]
    return np.clip(xy, 0, [width - 1, height - 1])


def _figure_mask(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) float mask of the figure with a soft, rounded profile (1 on the limbs' axes)."""
    from PIL import Image, ImageDraw, ImageFilter

    unit = min(height / 8.0, width / 3.2)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for a, b in _LIMBS:
        draw.line([tuple(xy[a]), tuple(xy[b])], fill=255, width=max(2, int(0.45 * unit)))
    r = 0.45 * unit
    draw.ellipse([xy[0][0] - r, xy[0][1] - r, xy[0][0] + r, xy[0][1] + r], fill=255)
    soft = canvas.filter(ImageFilter.GaussianBlur(max(1.0, 0.12 * unit)))
    return np.asarray(soft, dtype=np.float32) / 255.0


def _normals_from_depth(depth: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 normal map in the pack's convention (pipelines/depth_normal.py), from the same
    depth-to-normal code the data preparation uses."""
    import torch

    from ...pipelines.depth_normal import normals_from_depth

    colours = normals_from_depth(torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None, None])
    return (colours[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


def _item_images(rng: np.random.Generator, height: int, width: int, clothes: str):
    from ...pipelines.pose.draw import draw_pose
    from ...pipelines.pose.keypoints import make_frame, person_from_openpose18

    xy = _keypoints(rng, height, width)
    frame = make_frame([person_from_openpose18(xy.astype(np.float32), np.ones(18, np.float32))], height, width)
    mask = _figure_mask(xy, height, width)
    # background: a vertical gradient between two random colours
    top, bottom = rng.integers(40, 215, 3), rng.integers(40, 215, 3)
    ramp = np.linspace(0, 1, height)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp) * np.ones((1, width, 1))
    body = np.array(_COLOURS[clothes], dtype=np.float64)
    image = background * (1 - mask[..., None]) + body * mask[..., None]
    head = np.zeros((height, width), np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    head_r = 0.45 * min(height / 8.0, width / 3.2)
    head[(yy - xy[0][1]) ** 2 + (xx - xy[0][0]) ** 2 <= head_r ** 2] = 1.0
    image = image * (1 - head[..., None]) + np.array([225, 180, 150]) * head[..., None]
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    depth = np.clip(0.15 + 0.85 * mask, 0, 1) * (1.0 - 0.1 * ramp[..., 0])  # background far, body near
    depth_png = (depth * 255).round().astype(np.uint8)
    normal = _normals_from_depth(depth)
    pose = draw_pose(frame, height, width)
    return image, pose, depth_png, normal, frame


def build_tiny_dataset(root: str, n: int = 4, sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES, *, seed: int = 0,
                       shards: int = 1) -> str:
    """Write `n` items into `root` (layout of training/dataset.py), cycling through `sizes` ((height, width),
    multiples of 64 so the degradations, VAE and UNet take them); `shards` > 1 writes
    manifest-<i>-of-<n>.jsonl files instead of manifest.jsonl. Returns `root`."""
    from PIL import Image

    for height, width in sizes:
        if height % 64 or width % 64:
            raise ValueError(f"sizes must be multiples of 64 px, got {height}x{width}")
    for folder in ("images", "pose", "keypoints", "depth", "normal"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        height, width = sizes[i % len(sizes)]
        item_id = f"tiny{i:04d}"
        clothes = CLOTHES[i % len(CLOTHES)]
        image, pose, depth, normal, frame = _item_images(rng, height, width, clothes)
        entry = {"id": item_id, "width": width, "height": height, "image": f"images/{item_id}.png",
                 "pose": f"pose/{item_id}.png", "keypoints": f"keypoints/{item_id}.json",
                 "depth": f"depth/{item_id}.png", "normal": f"normal/{item_id}.png",
                 "caption": f"a full-body photo of a person in a {clothes} outfit", "source": "synthetic"}
        Image.fromarray(image).save(os.path.join(root, entry["image"]))
        Image.fromarray(pose).save(os.path.join(root, entry["pose"]))
        Image.fromarray(depth, mode="L").save(os.path.join(root, entry["depth"]))
        Image.fromarray(normal).save(os.path.join(root, entry["normal"]))
        with open(os.path.join(root, entry["keypoints"]), "w", encoding="utf-8") as f:
            json.dump(frame, f)
        lines.append(json.dumps(entry))
    names = ["manifest.jsonl"] if shards <= 1 else [f"manifest-{i}-of-{shards}.jsonl" for i in range(shards)]
    for s, name in enumerate(names):
        with open(os.path.join(root, name), "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines[s::len(names)])
    return root
