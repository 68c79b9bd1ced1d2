"""Pose keypoints in the POSE_KEYPOINT format that other ComfyUI packs exchange.

A *frame* is the result for one image, laid out like OpenPose's JSON output and exactly as
comfyui_controlnet_aux's DWPose node writes it (its `encode_poses_as_dict`)::

    {"people": [{"pose_keypoints_2d": [x, y, c] * 18,
                 "face_keypoints_2d": [x, y, c] * 70 or None,
                 "hand_left_keypoints_2d": [x, y, c] * 21 or None,
                 "hand_right_keypoints_2d": [x, y, c] * 21 or None}, ...],
     "canvas_width": W, "canvas_height": H}

Coordinates and confidences, as comfyui_controlnet_aux does them (checked against its source):

- x, y are PIXELS of the canvas (W x H, the image the pose was estimated on), not 0..1. Its DWPose
  writes pixels; its older OpenPose path writes 0..1 fractions, and its consumers tell the two
  apart by "every coordinate lies in [0, 1]" (`is_normalized`). We always write pixels and accept
  both when reading (`frame_in_pixels`).
- c is 1.0 for a keypoint that was found and 0.0 otherwise (a missing keypoint is [0, 0, 0]). Its
  reader (`decode_json_as_poses`, used by "Render Pose JSON") drops every keypoint with c < 1.0,
  so writing the raw model score would make most keypoints vanish there. The score threshold
  that decides "found" is DWPose's 0.3.
- A face or hand part is None when none of its keypoints was found; the body list is always
  present (all zeros when nothing was found).
- Face: 68 COCO-WholeBody face points followed by the right and left eye of the body, making the
  70 points of OpenPose's face model (as DWPose does).

A POSE_KEYPOINT node output is a list of frames, one per batch image.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...models.errors import DiffBodyError
from ..image import BadImage

Frame = dict[str, Any]
Person = dict[str, Any]

# OpenPose COCO-18 body order.
NOSE, NECK = 0, 1
R_SHOULDER, R_ELBOW, R_WRIST = 2, 3, 4
L_SHOULDER, L_ELBOW, L_WRIST = 5, 6, 7
R_HIP, R_KNEE, R_ANKLE = 8, 9, 10
L_HIP, L_KNEE, L_ANKLE = 11, 12, 13
R_EYE, L_EYE, R_EAR, L_EAR = 14, 15, 16, 17
BODY_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
NUM_BODY, NUM_FACE, NUM_HAND = 18, 70, 21

# The 17 limbs of the OpenPose/ControlNet skeleton, as (from, to) body indices, in drawing order
# (the order fixes each limb's colour).
BODY_LIMBS = (
    (NECK, R_SHOULDER), (NECK, L_SHOULDER), (R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST),
    (L_SHOULDER, L_ELBOW), (L_ELBOW, L_WRIST), (NECK, R_HIP), (R_HIP, R_KNEE), (R_KNEE, R_ANKLE),
    (NECK, L_HIP), (L_HIP, L_KNEE), (L_KNEE, L_ANKLE), (NECK, NOSE), (NOSE, R_EYE), (R_EYE, R_EAR),
    (NOSE, L_EYE), (L_EYE, L_EAR),
)

# COCO-17 order (MMPose, DWPose's body, MediaPipe after mapping): nose, l/r eye, l/r ear, l/r shoulder,
# l/r elbow, l/r wrist, l/r hip, l/r knee, l/r ankle. Below, the COCO-17 index of each OpenPose-18
# keypoint; the neck (None) has no COCO counterpart and is the mean of the shoulders.
COCO17_L_SHOULDER, COCO17_R_SHOULDER = 5, 6
COCO17_FOR_OPENPOSE18 = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)

# COCO-WholeBody 133: 17 body, 6 feet, 68 face, 21 left hand, 21 right hand.
WHOLEBODY_FACE = slice(23, 91)
WHOLEBODY_LEFT_HAND = slice(91, 112)
WHOLEBODY_RIGHT_HAND = slice(112, 133)
NUM_WHOLEBODY = 133

# DWPose's score threshold for "this keypoint was found".
FOUND_THRESHOLD = 0.3

PART_KEYS = {"body": "pose_keypoints_2d", "face": "face_keypoints_2d",
             "left_hand": "hand_left_keypoints_2d", "right_hand": "hand_right_keypoints_2d"}
PART_SIZES = {"body": NUM_BODY, "face": NUM_FACE, "left_hand": NUM_HAND, "right_hand": NUM_HAND}


class BadPoseKeypoints(DiffBodyError):
    """A POSE_KEYPOINT value the pack cannot interpret."""


def coco17_to_openpose18(xy: np.ndarray, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO-17 keypoints (..., 17, 2) and scores (..., 17) -> OpenPose-18 (..., 18, 2), (..., 18).

    The neck is the midpoint of the shoulders, with the lower of their two scores (so it counts as
    found only when both shoulders do, as in DWPose).
    """
    xy = np.asarray(xy, dtype=np.float32)
    conf = np.asarray(conf, dtype=np.float32)
    if xy.shape[-2:] != (17, 2) or conf.shape != xy.shape[:-1]:
        raise ValueError(f"expected (...,17,2) keypoints and (...,17) scores, got {xy.shape} and {conf.shape}")
    l_sho, r_sho = COCO17_L_SHOULDER, COCO17_R_SHOULDER
    neck_xy = (xy[..., l_sho, :] + xy[..., r_sho, :]) / 2
    neck_conf = np.minimum(conf[..., l_sho], conf[..., r_sho])
    out_xy = np.stack([neck_xy if i is None else xy[..., i, :] for i in COCO17_FOR_OPENPOSE18], axis=-2)
    out_conf = np.stack([neck_conf if i is None else conf[..., i] for i in COCO17_FOR_OPENPOSE18], axis=-1)
    return out_xy, out_conf


def flatten_part(xy: np.ndarray, conf: np.ndarray, threshold: float = FOUND_THRESHOLD) -> list[float]:
    """(K,2) pixel coordinates and (K,) scores -> [x, y, c] * K with c 1.0 (found) or 0.0 (missing)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    found = np.asarray(conf, dtype=np.float64).reshape(-1) >= threshold
    found &= np.isfinite(xy).all(axis=1)
    out: list[float] = []
    for (x, y), ok in zip(xy, found):
        out.extend((float(x), float(y), 1.0) if ok else (0.0, 0.0, 0.0))
    return out


def flatten_optional_part(xy: np.ndarray, conf: np.ndarray, threshold: float = FOUND_THRESHOLD) -> list[float] | None:
    """Like `flatten_part`, but None when no keypoint of the part was found (a face or hand)."""
    flat = flatten_part(xy, conf, threshold)
    return flat if any(flat[2::3]) else None


def unflatten_part(flat: Sequence[float] | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    """[x, y, c] * K (or None) -> (K,2) float32 coordinates and (K,) bool "found" (c > 0).

    Any c > 0 counts as found, so files with real OpenPose scores read correctly too.
    """
    if flat is None:
        return np.zeros((size, 2), np.float32), np.zeros(size, bool)
    arr = np.asarray(flat, dtype=np.float32)
    if arr.ndim != 1 or arr.size != 3 * size:
        raise BadPoseKeypoints(f"expected {size} keypoints as [x, y, c] * {size} ({3 * size} numbers), got {arr.size}")
    arr = arr.reshape(size, 3)
    return arr[:, :2].copy(), arr[:, 2] > 0


def make_person(body: list[float], face: list[float] | None = None,
                left_hand: list[float] | None = None, right_hand: list[float] | None = None) -> Person:
    return {PART_KEYS["body"]: body, PART_KEYS["face"]: face,
            PART_KEYS["left_hand"]: left_hand, PART_KEYS["right_hand"]: right_hand}


def make_frame(people: list[Person], height: int, width: int) -> Frame:
    return {"people": people, "canvas_width": int(width), "canvas_height": int(height)}


def person_from_openpose18(xy: np.ndarray, conf: np.ndarray, threshold: float = FOUND_THRESHOLD) -> Person:
    """A body-only person from OpenPose-18 pixel keypoints (18,2) and scores (18,)."""
    return make_person(flatten_part(xy, conf, threshold))


def person_from_wholebody133(xy: np.ndarray, conf: np.ndarray, threshold: float = FOUND_THRESHOLD) -> Person:
    """A person from COCO-WholeBody pixel keypoints (133,2) and scores (133,), as DWPose lays it out."""
    xy = np.asarray(xy, dtype=np.float32)
    conf = np.asarray(conf, dtype=np.float32)
    if xy.shape != (NUM_WHOLEBODY, 2) or conf.shape != (NUM_WHOLEBODY,):
        raise ValueError(f"expected (133,2) keypoints and (133,) scores, got {xy.shape} and {conf.shape}")
    body_xy, body_conf = coco17_to_openpose18(xy[:17], conf[:17])
    face = None
    if flatten_optional_part(xy[WHOLEBODY_FACE], conf[WHOLEBODY_FACE], threshold) is not None:
        eyes = [R_EYE, L_EYE]  # OpenPose's face model ends with the two pupils
        face = flatten_part(np.concatenate([xy[WHOLEBODY_FACE], body_xy[eyes]]),
                            np.concatenate([conf[WHOLEBODY_FACE], body_conf[eyes]]), threshold)
    return make_person(
        flatten_part(body_xy, body_conf, threshold),
        face=face,
        left_hand=flatten_optional_part(xy[WHOLEBODY_LEFT_HAND], conf[WHOLEBODY_LEFT_HAND], threshold),
        right_hand=flatten_optional_part(xy[WHOLEBODY_RIGHT_HAND], conf[WHOLEBODY_RIGHT_HAND], threshold),
    )


def check_rgb_uint8(image: Any) -> np.ndarray:
    """The input every estimator takes: an (H, W, 3) uint8 RGB array (made contiguous)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise BadImage(f"pose estimation expects an (H, W, 3) uint8 RGB array, got {type(image).__name__} {shape}")
    return np.ascontiguousarray(image)


def check_frame(frame: Any) -> Frame:
    """Raise BadPoseKeypoints unless `frame` is a well-formed POSE_KEYPOINT frame; return it."""
    if not isinstance(frame, dict):
        raise BadPoseKeypoints(f"a pose frame must be a dict, got {type(frame).__name__}")
    for key in ("canvas_width", "canvas_height"):
        if not isinstance(frame.get(key), (int, np.integer)) or frame[key] <= 0:
            raise BadPoseKeypoints(f"a pose frame needs a positive integer '{key}', got {frame.get(key)!r}")
    people = frame.get("people")
    if not isinstance(people, list):
        raise BadPoseKeypoints("a pose frame needs a 'people' list")
    for person in people:
        if not isinstance(person, dict):
            raise BadPoseKeypoints(f"each person must be a dict, got {type(person).__name__}")
        for part, key in PART_KEYS.items():
            if person.get(key) is not None:
                unflatten_part(person[key], PART_SIZES[part])
    return frame


def frame_is_normalised(frame: Frame) -> bool:
    """True when every found coordinate lies in [0, 1] (0..1 fractions, not pixels).

    The same rule comfyui_controlnet_aux uses; a frame with no found keypoint counts as pixels.
    """
    coords = [xy[found] for xy, found in _all_parts(frame)]
    coords = np.concatenate(coords) if coords else np.zeros((0, 2), np.float32)
    return coords.size > 0 and bool(np.all(np.abs(coords) <= 1.0))


def frame_in_pixels(frame: Frame) -> Frame:
    """A copy of the frame with coordinates in canvas pixels, whichever convention it came in."""
    check_frame(frame)
    if not frame_is_normalised(frame):
        return scale_frame(frame, frame["canvas_height"], frame["canvas_width"])
    w, h = frame["canvas_width"], frame["canvas_height"]
    return _map_coordinates(frame, w, h, h, w)


def scale_frame(frame: Frame, height: int, width: int) -> Frame:
    """A copy of a pixel-coordinate frame on a (height, width) canvas, coordinates scaled to match."""
    check_frame(frame)
    sx, sy = width / frame["canvas_width"], height / frame["canvas_height"]
    return _map_coordinates(frame, sx, sy, height, width)


def part_arrays(person: Person, part: str) -> tuple[np.ndarray, np.ndarray]:
    """One part ("body", "face", "left_hand", "right_hand") of a person -> (K,2) xy, (K,) found."""
    return unflatten_part(person.get(PART_KEYS[part]), PART_SIZES[part])


def _all_parts(frame: Frame):
    for person in frame["people"]:
        for part, key in PART_KEYS.items():
            if person.get(key) is not None:
                yield part_arrays(person, part)


def _map_coordinates(frame: Frame, sx: float, sy: float, height: int, width: int) -> Frame:
    people = []
    for person in frame["people"]:
        new = dict(person)
        for part, key in PART_KEYS.items():
            if person.get(key) is None:
                new[key] = None
                continue
            xy, found = part_arrays(person, part)
            new[key] = flatten_part(xy * np.float32([sx, sy]), found.astype(np.float32), threshold=0.5)
        people.append(new)
    return make_frame(people, height, width)
