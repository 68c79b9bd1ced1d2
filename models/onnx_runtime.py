"""ONNX Runtime for the pack's ONNX networks (DWPose's two files, the face identity metric's insightface files):
the lazy import with the message naming both builds, the providers, opening a session, and the greedy NMS
their detectors share. On this floor because pipelines/pose/dwpose.py and models/face_identity.py both use it.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from .errors import MissingDependency, MissingModelFile, WrongModelFile

log = logging.getLogger(__name__)

ONNXRUNTIME_HINT = (
    "needs ONNX Runtime, which the pack leaves to you because its two builds provide the same "
    "`onnxruntime` module and break each other when both are installed. Install exactly one, into ComfyUI's "
    "Python: `pip install onnxruntime-gpu` (NVIDIA CUDA) or `pip install onnxruntime` (CPU, Apple, other GPUs).")
BOTH_ONNXRUNTIMES_HINT = (
    "DiffBody: both `onnxruntime` (CPU) and `onnxruntime-gpu` are installed, and the CPU build has "
    "replaced the CUDA one: `pip uninstall -y onnxruntime onnxruntime-gpu`, then `pip install onnxruntime-gpu`. "
    "The ONNX networks run on the CPU until then.")
DWPOSE_USER = ("DWPose", "Or choose another pose backend.")


def onnxruntime_module(user: tuple[str, str] = DWPOSE_USER):
    """The onnxruntime module, or MissingDependency naming both of its builds. `user`: (what needs it, the way
    around it) for the message."""
    try:
        import onnxruntime
    except ImportError as e:
        what, alternative = user
        raise MissingDependency(f"{what} {ONNXRUNTIME_HINT} {alternative} (import error: {e})") from e
    return onnxruntime


def installed(distribution: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def onnx_providers(device: str | None = None, user: tuple[str, str] = DWPOSE_USER) -> list[str]:
    """CUDA first when onnxruntime has it and the caller did not ask for the CPU, then the CPU."""
    ort = onnxruntime_module(user)
    available = ort.get_available_providers()
    wants_gpu = device is None or not str(device).startswith("cpu")
    if wants_gpu and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if wants_gpu and installed("onnxruntime") and installed("onnxruntime-gpu"):
        log.warning(BOTH_ONNXRUNTIMES_HINT)
    elif device is not None and str(device).startswith("cuda"):
        log.warning("DiffBody: onnxruntime has no CUDA provider here (install onnxruntime-gpu instead of "
                    "onnxruntime); %s runs on the CPU.", user[0])
    return ["CPUExecutionProvider"]


def open_session(path: str, providers: list[str], user: tuple[str, str] = DWPOSE_USER):
    ort = onnxruntime_module(user)
    if not os.path.isfile(path):
        raise MissingModelFile(f"DiffBody: {user[0]} model file not found: {path}")
    try:
        session = ort.InferenceSession(path, providers=providers)
    except Exception as e:  # onnxruntime raises its own untyped errors for broken files
        raise WrongModelFile(f"DiffBody: onnxruntime could not open '{path}': {e}") from e
    if "CUDAExecutionProvider" in providers and "CUDAExecutionProvider" not in session.get_providers():
        log.warning("DiffBody: onnxruntime could not start CUDA for %s (see its log above); "
                    "running on the CPU.", os.path.basename(path))
    return session


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression; the indices kept, best first (pixel-inclusive areas, as YOLOX's and
    insightface's SCRFD code compute them)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou_threshold]
    return keep
