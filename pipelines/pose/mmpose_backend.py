"""MMPose top-down backend, for users who already have a working mmpose 1.x.

The paper cites MMPose, but mmpose needs mmcv, whose compiled wheels stop at old torch versions
(mmcv 2.1.0 was built for torch 2.1 at most, and mmpose 1.3 requires mmcv < 2.2): on a current
ComfyUI it usually has to be compiled and often fails. DWPose gives the same whole-body keypoints
(it is an RTMPose model distilled in MMPose) without it, so it is the default; this backend is
never a requirement and is imported only when chosen.

Model files, from the pose model folder: a top-down config (.py) and its checkpoint (.pth), e.g.
`rtmpose-l_8xb32-270e_coco-wholebody-384x288.py` with its checkpoint (133 keypoints), or any
COCO-17 body model. Person boxes come from the DWPose YOLOX detector when its file is given,
otherwise the whole image is one person box.
"""

from __future__ import annotations

import os

import numpy as np

from ...models.errors import MissingDependency, MissingModelFile, WrongModelFile
from .keypoints import (NUM_WHOLEBODY, Frame, check_rgb_uint8, coco17_to_openpose18, make_frame,
                        person_from_openpose18, person_from_wholebody133)

INSTALL_HINT = (
    "The MMPose backend needs mmpose 1.x with mmcv 2.x and mmengine, which are not installed (and "
    "are not needed for anything else in DiffBody). mmpose 1.3 accepts mmcv >= 2.0 and < 2.2, and "
    "mmcv 2.1.0 ships compiled wheels only for torch <= 2.1 (CUDA 11.8/12.1); on a current ComfyUI "
    "torch it must be compiled from source (a CUDA toolkit matching torch.version.cuda, often "
    "failing), and mmengine's checkpoint loading predates torch 2.6's weights_only default. If you "
    "still want it, in ComfyUI's Python: pip install -U openmim && mim install mmengine "
    "'mmcv>=2.0.1,<2.2.0' 'mmpose>=1.1.0'. Otherwise choose the 'dwpose' backend: the same "
    "whole-body keypoints (an RTMPose model trained with MMPose) on onnxruntime, no mmcv."
)


def import_mmpose():
    """mmpose's `init_model` and `inference_topdown`, or MissingDependency with how to get them."""
    try:
        from mmpose.apis import inference_topdown, init_model
    except ImportError as e:  # mmcv's compiled ops missing also surfaces here
        raise MissingDependency(f"{INSTALL_HINT}\n(import error: {e})") from e
    return init_model, inference_topdown


class MMPoseEstimator:
    """Top-down MMPose keypoints of every person box: `estimator(rgb_uint8_image) -> frame`."""

    def __init__(self, config_path: str, checkpoint_path: str, device: str = "cpu",
                 det_model_path: str | None = None):
        init_model, self._inference_topdown = import_mmpose()
        for path in (config_path, checkpoint_path):
            if not os.path.isfile(path):
                raise MissingModelFile(f"DiffBody: MMPose model file not found: {path}")
        self.model = init_model(config_path, checkpoint_path, device=device)
        self.detector = None
        if det_model_path:
            from .dwpose import onnx_providers, open_session

            self.detector = open_session(det_model_path, onnx_providers(device))

    def person_boxes(self, image: np.ndarray) -> np.ndarray:
        if self.detector is None:
            h, w = image.shape[:2]
            return np.array([[0, 0, w, h]], np.float32)
        from .dwpose import letterbox, person_boxes

        batch, ratio = letterbox(image)
        raw = self.detector.run(None, {self.detector.get_inputs()[0].name: batch})[0]
        return person_boxes(raw[0], ratio)

    def __call__(self, image: np.ndarray) -> Frame:
        image = check_rgb_uint8(image)
        h, w = image.shape[:2]
        boxes = self.person_boxes(image)
        if len(boxes) == 0:
            return make_frame([], h, w)
        # mmpose loads images the OpenCV way (BGR); its data preprocessor converts to RGB itself.
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        samples = self._inference_topdown(self.model, bgr, boxes, bbox_format="xyxy")
        people = []
        for sample in samples:
            keypoints = np.asarray(sample.pred_instances.keypoints, np.float32)
            scores = np.asarray(sample.pred_instances.keypoint_scores, np.float32)
            people += [person_from_keypoints(k, s) for k, s in zip(keypoints, scores)]
        return make_frame(people, h, w)


def person_from_keypoints(xy: np.ndarray, scores: np.ndarray) -> dict:
    """An MMPose prediction (K,2), (K,) -> a person, for COCO-WholeBody (133) or COCO body (17)."""
    if xy.shape[0] == NUM_WHOLEBODY:
        return person_from_wholebody133(xy, scores)
    if xy.shape[0] == 17:
        return person_from_openpose18(*coco17_to_openpose18(xy, scores))
    raise WrongModelFile(f"DiffBody: the MMPose model predicts {xy.shape[0]} keypoints; "
                         "use a COCO-WholeBody (133) or COCO (17) top-down model")
