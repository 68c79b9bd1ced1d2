"""Tiny stand-ins for insightface's face detector and recognition networks, with their real interfaces, written
by torch.onnx.export of small torch modules (the legacy TorchScript exporter: no onnxscript needed).

- det_10g.onnx / scrfd_10g_bnkps.onnx (one file in the real packs): input "input.1" (1, 3, ?, ?); nine outputs
  named "448", "471", "494" (scores at strides 8, 16, 32, (N, 1)), "451", "474", "497" (box distances,
  (N, 4)), "454", "477", "500" (keypoint offsets, (N, 10)), in that order; N = (H/s)(W/s) x 2 anchors.
- w600k_r50.onnx / glintr100.onnx: input "input.1" (?, 3, 112, 112) -> one output (?, 512), named "683" in
  w600k_r50 (glintr100's output name was not checked; the pack's code reads the single output by position).

The tiny detector pools the image at each stride and runs a 1x1 convolution (its output depends on the image),
plus, at a 640 x 640 input, a fixed prior that reports the given faces: each face's anchor (the first of the
stride-32 grid point nearest the box centre) gets a confident score and the exact distances and offsets of
its box and keypoints. The tiny recognition network is a strided convolution and a linear layer.
"""

from __future__ import annotations

import numpy as np

DETECTOR_SIZE = 640
STRIDES = (8, 16, 32)
ANCHORS = 2
DETECTOR_OUTPUTS = ("448", "471", "494", "451", "474", "497", "454", "477", "500")
RECOGNITION_OUTPUTS = {"w600k_r50.onnx": "683", "glintr100.onnx": "embedding"}
OPSET = 17
FACE_STRIDE = 32  # the stride whose anchors carry the prior's faces


def default_face(cx: float = 320.0, cy: float = 240.0, size: float = 160.0) -> dict:
    """A frontal face in 640 x 640 input pixels: its box and five keypoints (eyes, nose, mouth corners)."""
    half = size / 2
    keypoints = [(cx - 0.3 * size, cy - 0.15 * size), (cx + 0.3 * size, cy - 0.15 * size), (cx, cy + 0.05 * size),
                 (cx - 0.25 * size, cy + 0.25 * size), (cx + 0.25 * size, cy + 0.25 * size)]
    return {"box": (cx - half, cy - half, cx + half, cy + half), "keypoints": keypoints}


def face_anchor(face: dict) -> tuple[int, float, float]:
    """The prior's anchor for a face: (its index among the stride-32 anchors, its centre x, y)."""
    x1, y1, x2, y2 = face["box"]
    grid = DETECTOR_SIZE // FACE_STRIDE
    gx = min(grid - 1, int(((x1 + x2) / 2) // FACE_STRIDE))
    gy = min(grid - 1, int(((y1 + y2) / 2) // FACE_STRIDE))
    return (gy * grid + gx) * ANCHORS, gx * FACE_STRIDE, gy * FACE_STRIDE


def _priors(faces) -> list[np.ndarray]:
    """Per stride: (N, 1) score logits, (N, 4) distances, (N, 10) offsets (in stride units) for a 640 input."""
    priors = []
    for stride in STRIDES:
        n = (DETECTOR_SIZE // stride) ** 2 * ANCHORS
        priors.append([np.full((n, 1), -12.0, np.float32), np.zeros((n, 4), np.float32), np.zeros((n, 10), np.float32)])
    level = STRIDES.index(FACE_STRIDE)
    for face in faces:
        anchor, cx, cy = face_anchor(face)
        x1, y1, x2, y2 = face["box"]
        priors[level][0][anchor] = 12.0
        priors[level][1][anchor] = np.array([cx - x1, cy - y1, x2 - cx, y2 - cy]) / FACE_STRIDE
        priors[level][2][anchor] = (np.array(face["keypoints"]) - [cx, cy]).ravel() / FACE_STRIDE
    return [array for level_priors in zip(*priors) for array in level_priors]  # scores x3, boxes x3, kps x3


def tiny_detector(faces):
    import torch
    from torch import nn

    class TinySCRFD(nn.Module):
        def __init__(self):
            super().__init__()
            # per anchor: 1 score, 4 distances, 10 offsets; tiny weights so the prior's faces stay put
            self.heads = nn.ModuleList(nn.Conv2d(3, ANCHORS * 15, 1) for _ in STRIDES)
            for head in self.heads:
                nn.init.normal_(head.weight, std=1e-4)
                nn.init.zeros_(head.bias)
            for i, prior in enumerate(_priors(faces)):
                self.register_buffer(f"prior{i}", torch.from_numpy(prior))

        def forward(self, x):
            outputs = [[], [], []]
            for stride, head in zip(STRIDES, self.heads):
                y = head(nn.functional.avg_pool2d(x, stride)).permute(0, 2, 3, 1)  # (1, h, w, 2 x 15)
                y = y.reshape(-1, 15)  # row-major grid, the two anchors of a point one after the other
                for k, (start, width) in enumerate(((0, 1), (1, 4), (5, 10))):
                    outputs[k].append(y[:, start:start + width])
            flat = [o for kind in outputs for o in kind]
            scores = [torch.sigmoid(o + getattr(self, f"prior{i}")) for i, o in enumerate(flat[:3])]
            return (*scores, *[o + getattr(self, f"prior{i + 3}") for i, o in enumerate(flat[3:])])

    return TinySCRFD().eval()


def write_tiny_face_detector(path: str, faces=(default_face(),), seed: int = 0) -> str:
    """The tiny SCRFD reporting `faces` (dicts of "box" and "keypoints" in 640 x 640 input pixels) at `path`."""
    import torch

    from . import seeded_init

    with seeded_init(seed):
        model = tiny_detector(faces)
    dynamic = {"input.1": {2: "?", 3: "?"}, **{name: {0: "?"} for name in DETECTOR_OUTPUTS}}
    _export(model, torch.zeros(1, 3, DETECTOR_SIZE, DETECTOR_SIZE), path, list(DETECTOR_OUTPUTS), dynamic)
    return path


def write_tiny_face_recognition(path: str, seed: int = 0, output_name: str | None = None) -> str:
    """The tiny ArcFace (B, 3, 112, 112) -> (B, 512) at `path`, its output named as the file's real one."""
    import os

    import torch
    from torch import nn

    from . import seeded_init

    with seeded_init(seed):
        model = nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.Flatten(), nn.Linear(8 * 14 * 14, 512)).eval()
    name = output_name or RECOGNITION_OUTPUTS.get(os.path.basename(path), "embedding")
    _export(model, torch.zeros(1, 3, 112, 112), path, [name], {"input.1": {0: "?"}, name: {0: "?"}})
    return path


def _export(model, example, path: str, output_names: list[str], dynamic_axes: dict) -> None:
    """torch.onnx.export, then the outputs renamed to `output_names` (TorchScript export refuses names that
    are numbers, which the real files' are)."""
    import io
    import warnings

    import onnx
    import torch

    placeholders = [f"out_{i}" for i in range(len(output_names))]
    axes = {placeholders[output_names.index(k)] if k in output_names else k: v for k, v in dynamic_axes.items()}
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["input.1"],
                          output_names=placeholders, dynamic_axes=axes, opset_version=OPSET)
    graph = onnx.load_from_string(buffer.getvalue())
    renames = dict(zip(placeholders, output_names))
    for node in graph.graph.node:
        node.output[:] = [renames.get(name, name) for name in node.output]
    for output in graph.graph.output:
        output.name = renames.get(output.name, output.name)
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, path)

