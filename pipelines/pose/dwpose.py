"""DWPose on onnxruntime: YOLOX-L person boxes, then RTMPose-style whole-body keypoints per box.

The numbers (letterbox 640 padded with grey 114 at the top-left, YOLOX strides 8/16/32, score 0.1
before and 0.3 after a 0.45-IoU NMS, box padding 1.25, ImageNet mean/std in RGB, SimCC split
ratio 2) are those of DWPose's own ONNX inference (IDEA-Research/DWPose, ControlNet-v1-1-nightly
annotator). Both networks get the image in RGB, as DWPose feeds them.
"""

from __future__ import annotations

import numpy as np

from ...models.errors import WrongModelFile
# ONNX Runtime's import, providers and sessions, and NMS live on the models floor (the face identity metric
# uses them too); the pose backends import them from here.
from ...models.onnx_runtime import nms, onnx_providers, open_session
from .keypoints import NUM_WHOLEBODY, Frame, check_rgb_uint8, make_frame, person_from_wholebody133

DETECTOR_SIZE = (640, 640)  # (h, w) of yolox_l.onnx's input
YOLOX_STRIDES = (8, 16, 32)
LETTERBOX_FILL = 114
PRE_NMS_SCORE, NMS_IOU, PERSON_SCORE = 0.1, 0.45, 0.3
PERSON_CLASS = 0
BOX_PADDING = 1.25
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)


# ---------------------------------------------------------------- person detector (YOLOX)

def letterbox(image: np.ndarray, size: tuple[int, int] = DETECTOR_SIZE) -> tuple[np.ndarray, float]:
    """(H,W,3) uint8 -> (1,3,h,w) float32 resized to fit, grey-padded right/bottom; and the ratio."""
    import cv2

    h, w = image.shape[:2]
    ratio = min(size[0] / h, size[1] / w)
    nh, nw = int(h * ratio), int(w * ratio)
    padded = np.full((size[0], size[1], 3), LETTERBOX_FILL, np.uint8)
    padded[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32), ratio


def decode_yolox(raw: np.ndarray, size: tuple[int, int] = DETECTOR_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """YOLOX head output (A, 5+C) on the grid -> boxes (A,4) xyxy in letterbox pixels, scores (A,C)."""
    grids, strides = [], []
    for stride in YOLOX_STRIDES:
        gh, gw = size[0] // stride, size[1] // stride
        xv, yv = np.meshgrid(np.arange(gw), np.arange(gh))
        grids.append(np.stack((xv, yv), -1).reshape(-1, 2))
        strides.append(np.full((gh * gw, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    if raw.shape[0] != grid.shape[0]:
        raise WrongModelFile(f"DiffBody: the person detector gave {raw.shape[0]} anchors, a YOLOX model "
                             f"with a {size[1]}x{size[0]} input has {grid.shape[0]}")
    centre = (raw[:, :2] + grid) * stride
    half = np.exp(raw[:, 2:4]) * stride / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    return boxes, raw[:, 4:5] * raw[:, 5:]


def person_boxes(raw: np.ndarray, ratio: float, size: tuple[int, int] = DETECTOR_SIZE) -> np.ndarray:
    """YOLOX output (A, 5+C) -> person boxes (N,4) xyxy in image pixels, most confident first."""
    boxes, scores = decode_yolox(raw.astype(np.float32), size)
    person = scores[:, PERSON_CLASS]
    candidates = person > PRE_NMS_SCORE
    boxes, person = boxes[candidates] / ratio, person[candidates]
    keep = [i for i in nms(boxes, person, NMS_IOU) if person[i] > PERSON_SCORE]
    return boxes[keep].reshape(-1, 4)


# ---------------------------------------------------------------- keypoints (RTMPose SimCC)

def box_center_scale(box: np.ndarray, aspect: float, padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """xyxy box -> centre (2,) and padded size (w,h) widened to the model's w/h aspect ratio."""
    x1, y1, x2, y2 = box
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2], np.float32)
    w, h = (x2 - x1) * padding, (y2 - y1) * padding
    w, h = (w, w / aspect) if w > h * aspect else (h * aspect, h)
    return center, np.array([w, h], np.float32)


def crop_matrix(center: np.ndarray, scale: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """2x3 affine that maps the box (centre, size) onto an out_size (w,h) crop, no rotation."""
    s = out_size[0] / scale[0]
    return np.array([[s, 0, out_size[0] / 2 - s * center[0]],
                     [0, s, out_size[1] / 2 - s * center[1]]], np.float32)


def crop_person(image: np.ndarray, center: np.ndarray, scale: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """The normalised (3,h,w) float32 model input for one person box."""
    import cv2

    crop = cv2.warpAffine(image, crop_matrix(center, scale, out_size), out_size, flags=cv2.INTER_LINEAR)
    crop = (crop.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD
    return crop.transpose(2, 0, 1)


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(N,K,Wx), (N,K,Wy) -> crop coordinates (N,K,2) and scores (N,K) by argmax.

    The score is the lower of the two axis maxima; a keypoint with no positive response is put at
    -1 with its (non-positive) score, as DWPose does.
    """
    locs = np.stack([simcc_x.argmax(-1), simcc_y.argmax(-1)], -1).astype(np.float32) / split_ratio
    scores = np.minimum(simcc_x.max(-1), simcc_y.max(-1))
    locs[scores <= 0] = -1
    return locs, scores


class DWPoseEstimator:
    """Whole-body pose of every detected person: `estimator(rgb_uint8_image) -> frame`."""

    def __init__(self, det_model_path: str, pose_model_path: str, providers: list[str] | None = None):
        providers = providers or onnx_providers()
        self.detector = open_session(det_model_path, providers)
        self.pose = open_session(pose_model_path, providers)
        self._check_models(det_model_path, pose_model_path)

    def _check_models(self, det_path: str, pose_path: str) -> None:
        det_in = self.detector.get_inputs()[0]
        if list(det_in.shape[2:]) != list(DETECTOR_SIZE):
            raise WrongModelFile(f"DiffBody: '{det_path}' is not a YOLOX person detector with a 640x640 input "
                                 f"(input shape {det_in.shape})")
        pose_in = self.pose.get_inputs()[0]
        h, w = pose_in.shape[2:]
        if not (isinstance(h, int) and isinstance(w, int)):
            raise WrongModelFile(f"DiffBody: '{pose_path}' has no fixed input size ({pose_in.shape})")
        self.pose_size = (w, h)
        # Batch all crops when the model allows it; DWPose's own file may fix the batch at 1.
        self.pose_batches = not isinstance(pose_in.shape[0], int) or pose_in.shape[0] != 1
        outputs = {o.name: o for o in self.pose.get_outputs()}
        self.simcc_names = ["simcc_x", "simcc_y"] if {"simcc_x", "simcc_y"} <= outputs.keys() else \
            [o.name for o in self.pose.get_outputs()[:2]]
        k = outputs[self.simcc_names[0]].shape[1]
        if k != NUM_WHOLEBODY:
            raise WrongModelFile(f"DiffBody: '{pose_path}' predicts {k} keypoints; DWPose whole-body has 133")

    def detect(self, image: np.ndarray) -> np.ndarray:
        """Person boxes (N,4) xyxy in image pixels."""
        batch, ratio = letterbox(image)
        raw = self.detector.run(None, {self.detector.get_inputs()[0].name: batch})[0]
        return person_boxes(raw[0], ratio)

    def keypoints(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole-body keypoints (N,133,2) in image pixels and scores (N,133) for each box."""
        aspect = self.pose_size[0] / self.pose_size[1]
        boxes_cs = [box_center_scale(box, aspect) for box in boxes]
        crops = np.stack([crop_person(image, c, s, self.pose_size) for c, s in boxes_cs])
        simcc_x, simcc_y = self._run_pose(crops)
        split_ratio = simcc_x.shape[-1] / self.pose_size[0]
        locs, scores = decode_simcc(simcc_x, simcc_y, split_ratio)
        centers = np.stack([c for c, _ in boxes_cs])[:, None]
        scales = np.stack([s for _, s in boxes_cs])[:, None]
        return locs / np.float32(self.pose_size) * scales + centers - scales / 2, scores

    def _run_pose(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        name = self.pose.get_inputs()[0].name
        chunks = [crops] if self.pose_batches else [c[None] for c in crops]
        outs = [self.pose.run(self.simcc_names, {name: chunk}) for chunk in chunks]
        return (np.concatenate([o[0] for o in outs]).astype(np.float32),
                np.concatenate([o[1] for o in outs]).astype(np.float32))

    def __call__(self, image: np.ndarray) -> Frame:
        image = check_rgb_uint8(image)
        h, w = image.shape[:2]
        boxes = self.detect(image)
        if len(boxes) == 0:  # DWPose's annotator would guess a skeleton on the whole image; we do not
            return make_frame([], h, w)
        xy, scores = self.keypoints(image, boxes)
        return make_frame([person_from_wholebody133(p, s) for p, s in zip(xy, scores)], h, w)

