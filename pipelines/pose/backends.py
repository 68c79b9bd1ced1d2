"""Choosing a pose backend and running it over a batch.

Every estimator is a callable `(H, W, 3) uint8 RGB array -> POSE_KEYPOINT frame` (see keypoints.py).
Each backend module is imported only when that backend is asked for, so a missing optional
package (mmpose, mediapipe) only matters to whoever picks it.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from ...models.errors import DiffBodyError
from .keypoints import Frame

BACKENDS = ("dwpose", "openpose", "mmpose", "mediapipe")

# The model_paths keys each backend needs, with the usual file name where there is one.
MODEL_FILES: dict[str, dict[str, str | None]] = {
    "dwpose": {"det": "yolox_l.onnx", "pose": "dw-ll_ucoco_384.onnx"},
    "openpose": {"body": "body_pose_model.pth"},
    "mmpose": {"config": None, "checkpoint": None},  # optional "det": yolox_l.onnx for person boxes
    "mediapipe": {},  # its weights ship inside the mediapipe wheel
}


class UnknownBackend(DiffBodyError, ValueError):
    """A pose backend name the pack does not know."""


class PoseEstimator(Protocol):
    def __call__(self, image: np.ndarray) -> Frame: ...


def make_estimator(backend: str, model_paths: dict[str, str], device: str = "cpu") -> PoseEstimator:
    """Build the estimator for `backend` from model file paths keyed as in MODEL_FILES."""
    if backend not in BACKENDS:
        raise UnknownBackend(f"DiffBody: unknown pose backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    _require_keys(backend, model_paths)
    if backend == "dwpose":
        from .dwpose import DWPoseEstimator, onnx_providers

        return DWPoseEstimator(model_paths["det"], model_paths["pose"], providers=onnx_providers(device))
    if backend == "openpose":
        from .openpose import OpenPoseBodyEstimator

        return OpenPoseBodyEstimator(model_paths["body"], device=device)
    if backend == "mmpose":
        from .mmpose_backend import MMPoseEstimator

        return MMPoseEstimator(model_paths["config"], model_paths["checkpoint"], device=device,
                               det_model_path=model_paths.get("det"))
    from .mediapipe_backend import MediaPipePoseEstimator

    return MediaPipePoseEstimator()


def _require_keys(backend: str, model_paths: dict[str, str]) -> None:
    missing = [key for key in MODEL_FILES[backend] if not model_paths.get(key)]
    if missing:
        raise DiffBodyError(f"DiffBody: the '{backend}' pose backend needs model files for: {', '.join(missing)}")


def estimate_batch(estimator: PoseEstimator, images_uint8: list[np.ndarray],
                   progress: Callable[[int, int], None] | None = None) -> list[Frame]:
    """One frame per image, in order; `progress(done, total)` after each image."""
    frames = []
    for done, image in enumerate(images_uint8, start=1):
        frames.append(estimator(image))
        if progress is not None:
            progress(done, len(images_uint8))
    return frames


def estimate_and_draw(estimator: PoseEstimator, images, *, hands: bool = False, face: bool = False,
                      xinsir_sticks: bool = False, progress: Callable[[int, int], None] | None = None):
    """(B,3,H,W) float images -> ((B,3,H,W) skeleton images, one frame per image). The skeleton of
    each image is drawn at that image's size, so the pose prior lines up pixel for pixel; `xinsir_sticks`:
    as xinsir's ControlNets expect it (draw.py)."""
    import torch

    from ..image import chw_to_uint8, uint8_to_chw
    from .draw import draw_pose

    frames = estimate_batch(estimator, [chw_to_uint8(image) for image in images], progress)
    height, width = images.shape[-2:]
    skeletons = [uint8_to_chw(draw_pose(frame, height, width, hands=hands, face=face, xinsir_sticks=xinsir_sticks))
                 for frame in frames]
    return torch.stack(skeletons), frames
