"""The pose skeleton image `I_pose`: OpenPose/ControlNet/HumanSD drawing convention.

Black canvas; each of the 17 body limbs an ellipse in its own colour at 60 % intensity, each of the
18 joints a full-colour disc; hands as HSV-coloured lines with blue joints; face as white dots.
Sizes follow ControlNet's annotator (stick width 4, joint radius 4, hand lines 2, face dots 3 on a
512-pixel short side) and scale with the short side, so a large image gets the same skeleton as
the 512 annotator output resized to it: what DiffBody's own ControlNets are trained on.

`xinsir_sticks` draws instead what xinsir's SDXL ControlNets (ControlNet-Union, openpose) were trained on,
as comfyui_controlnet_aux's DWPose node draws it with "scale_stick_for_xinsr_cn": at the image's own size,
every stroke at its base size except the limbs, whose width grows with the long side (`xinsir_stick_scale`).
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from .keypoints import BODY_LIMBS, Frame, frame_in_pixels, part_arrays, scale_frame

# RGB colour of each limb (in BODY_LIMBS order) and of each body joint (in OpenPose-18 order).
BODY_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
LIMB_INTENSITY = 0.6  # ControlNet blends limbs 0.6 over the black canvas

HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11),
    (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)
HAND_EDGE_COLORS = tuple(
    tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0))
    for i in range(len(HAND_EDGES))
)
HAND_JOINT_COLOR = (0, 0, 255)
FACE_COLOR = (255, 255, 255)

REFERENCE_SIDE = 512  # the annotator resolution the base sizes belong to


def stroke_scale(height: int, width: int) -> float:
    """How much thicker than ControlNet's 512-pixel annotator output the strokes should be."""
    return min(height, width) / REFERENCE_SIDE


def xinsir_stick_scale(height: int, width: int) -> int:
    """The limb-width multiplier for xinsir's ControlNets: 1 below a 500-pixel long side, then 2 plus one per
    full 1000 pixels, at most 7 (comfyui_controlnet_aux, src/custom_controlnet_aux/dwpose/util.py,
    draw_bodypose with xinsr_stick_scaling, after xinsir/controlnet-openpose-sdxl-1.0's drawing code)."""
    long_side = max(height, width)
    return 1 if long_side < 500 else min(2 + long_side // 1000, 7)


def _size(base: float, scale: float) -> int:
    return max(1, int(round(base * scale)))


def draw_pose(frame: Frame, height: int, width: int, *, body: bool = True, hands: bool = False,
              face: bool = False, xinsir_sticks: bool = False) -> np.ndarray:
    """Draw every person of a POSE_KEYPOINT frame on a black (height, width, 3) uint8 RGB canvas.

    The frame's coordinates (pixels of its canvas, or 0..1 fractions) are mapped onto the requested
    size, so a frame estimated on a small copy of an image draws correctly on the full-size one.
    `xinsir_sticks`: the drawing xinsir's ControlNets expect (see the module's docstring).
    """
    frame = scale_frame(frame_in_pixels(frame), height, width)
    canvas = np.zeros((height, width, 3), np.uint8)
    scale = 1.0 if xinsir_sticks else stroke_scale(height, width)
    sticks = xinsir_stick_scale(height, width) if xinsir_sticks else 1
    for person in frame["people"]:
        if body:
            _draw_body(canvas, *part_arrays(person, "body"), scale, sticks)
        if hands:
            for side in ("left_hand", "right_hand"):
                _draw_hand(canvas, *part_arrays(person, side), scale)
        if face:
            _draw_face(canvas, *part_arrays(person, "face"), scale)
    return canvas


def _point(xy) -> tuple[int, int]:
    # Truncated like ControlNet's annotator, so a 512-pixel drawing matches it pixel for pixel.
    return int(xy[0]), int(xy[1])


def _draw_body(canvas: np.ndarray, xy: np.ndarray, found: np.ndarray, scale: float, sticks: int = 1) -> None:
    import cv2

    stick = _size(4, scale) * sticks
    for (a, b), color in zip(BODY_LIMBS, BODY_COLORS):
        if not (found[a] and found[b]):
            continue
        (x0, y0), (x1, y1) = xy[a], xy[b]
        length = math.hypot(x1 - x0, y1 - y0)
        angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
        polygon = cv2.ellipse2Poly(_point(((x0 + x1) / 2, (y0 + y1) / 2)), (int(length / 2), stick),
                                   int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(c * LIMB_INTENSITY) for c in color])
    radius = _size(4, scale)
    for point, ok, color in zip(xy, found, BODY_COLORS):
        if ok:
            cv2.circle(canvas, _point(point), radius, color, thickness=-1)


def _draw_hand(canvas: np.ndarray, xy: np.ndarray, found: np.ndarray, scale: float) -> None:
    import cv2

    thickness = _size(2, scale)
    for (a, b), color in zip(HAND_EDGES, HAND_EDGE_COLORS):
        if found[a] and found[b]:
            cv2.line(canvas, _point(xy[a]), _point(xy[b]), color, thickness=thickness)
    radius = _size(4, scale)
    for point, ok in zip(xy, found):
        if ok:
            cv2.circle(canvas, _point(point), radius, HAND_JOINT_COLOR, thickness=-1)


def _draw_face(canvas: np.ndarray, xy: np.ndarray, found: np.ndarray, scale: float) -> None:
    import cv2

    radius = _size(3, scale)
    for point, ok in zip(xy, found):
        if ok:
            cv2.circle(canvas, _point(point), radius, FACE_COLOR, thickness=-1)
