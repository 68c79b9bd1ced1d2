"""Pose extraction: keypoint format, skeleton drawing, DWPose/OpenPose on tiny weights, backend choice."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from comfyui_diffbody.models.errors import DiffBodyError, MissingDependency, MissingModelFile, WrongModelFile
from comfyui_diffbody.pipelines.image import BadImage
from comfyui_diffbody.pipelines.pose import keypoints as K
from comfyui_diffbody.pipelines.pose.backends import (BACKENDS, UnknownBackend, estimate_batch,
                                                      make_estimator)
from comfyui_diffbody.pipelines.pose.draw import BODY_COLORS, LIMB_INTENSITY, draw_pose

# ------------------------------------------------------------------ helpers


def standing_person(cx: float, top: float, height: float) -> tuple[np.ndarray, np.ndarray]:
    """OpenPose-18 keypoints of a person facing the camera (their right on the image left)."""
    u = height / 8
    pts = {
        K.NOSE: (0, 0.5), K.NECK: (0, 1.3), K.R_SHOULDER: (-0.9, 1.3), K.R_ELBOW: (-1.1, 2.5),
        K.R_WRIST: (-1.2, 3.6), K.L_SHOULDER: (0.9, 1.3), K.L_ELBOW: (1.1, 2.5), K.L_WRIST: (1.2, 3.6),
        K.R_HIP: (-0.5, 4.0), K.R_KNEE: (-0.55, 5.8), K.R_ANKLE: (-0.6, 7.6), K.L_HIP: (0.5, 4.0),
        K.L_KNEE: (0.55, 5.8), K.L_ANKLE: (0.6, 7.6), K.R_EYE: (-0.15, 0.35), K.L_EYE: (0.15, 0.35),
        K.R_EAR: (-0.3, 0.45), K.L_EAR: (0.3, 0.45),
    }
    xy = np.array([(cx + dx * u, top + dy * u) for _, (dx, dy) in sorted(pts.items())], np.float32)
    return xy, np.ones(18, np.float32)


def frame_of(*people_xy: np.ndarray, height: int, width: int) -> dict:
    return K.make_frame([K.person_from_openpose18(xy, np.ones(18)) for xy in people_xy], height, width)


@pytest.fixture(scope="module")
def tiny_dwpose(tmp_path_factory):
    from comfyui_diffbody.testing.tiny.dwpose import write_tiny_dwpose

    d = tmp_path_factory.mktemp("dwpose")
    det, pose = str(d / "yolox_l.onnx"), str(d / "dw-ll_ucoco_384.onnx")
    write_tiny_dwpose(det, pose, seed=0)
    return det, pose


@pytest.fixture(scope="module")
def tiny_openpose(tmp_path_factory):
    from comfyui_diffbody.testing.tiny.openpose import write_tiny_openpose

    path = str(tmp_path_factory.mktemp("openpose") / "body_pose_model.pth")
    write_tiny_openpose(path)
    return path


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------ format


def test_part_round_trip_marks_found_keypoints_with_confidence_one():
    xy = np.array([[10.5, 20.25], [0, 0], [30, 40]], np.float32)
    flat = K.flatten_part(xy, np.array([0.9, 0.1, 0.3]))
    assert flat == [10.5, 20.25, 1.0, 0.0, 0.0, 0.0, 30.0, 40.0, 1.0]
    back, found = K.unflatten_part(flat, 3)
    assert found.tolist() == [True, False, True]
    np.testing.assert_allclose(back[found], xy[[0, 2]])


def test_optional_part_is_none_when_nothing_found():
    assert K.flatten_optional_part(np.ones((21, 2)), np.zeros(21)) is None
    assert K.flatten_optional_part(np.ones((21, 2)), np.full(21, 0.5)) is not None


def test_frame_survives_json_and_check():
    xy, conf = standing_person(100, 20, 300)
    frame = K.make_frame([K.person_from_openpose18(xy, conf)], 400, 250)
    again = json.loads(json.dumps([frame]))[0]
    assert again == frame
    assert K.check_frame(again) is again
    assert set(again["people"][0]) == {"pose_keypoints_2d", "face_keypoints_2d",
                                       "hand_left_keypoints_2d", "hand_right_keypoints_2d"}
    assert len(again["people"][0]["pose_keypoints_2d"]) == 54
    assert (again["canvas_width"], again["canvas_height"]) == (250, 400)


@pytest.mark.parametrize("bad", [
    {"people": [], "canvas_width": 0, "canvas_height": 10},
    {"people": "x", "canvas_width": 10, "canvas_height": 10},
    {"people": [{"pose_keypoints_2d": [1.0] * 53}], "canvas_width": 10, "canvas_height": 10},
    [],
])
def test_malformed_frames_are_refused(bad):
    with pytest.raises(K.BadPoseKeypoints):
        K.check_frame(bad)


def test_normalised_frames_read_as_pixels():
    xy, _ = standing_person(100, 20, 300)
    pixels = frame_of(xy, height=400, width=200)
    normalised = frame_of(xy / np.float32([200, 400]), height=400, width=200)
    assert K.frame_is_normalised(normalised) and not K.frame_is_normalised(pixels)
    converted = K.frame_in_pixels(normalised)
    np.testing.assert_allclose(converted["people"][0]["pose_keypoints_2d"],
                               pixels["people"][0]["pose_keypoints_2d"], rtol=1e-5)


def test_scale_frame_moves_coordinates_with_the_canvas():
    xy, _ = standing_person(100, 20, 300)
    scaled = K.scale_frame(frame_of(xy, height=400, width=200), 800, 100)
    got, found = K.part_arrays(scaled["people"][0], "body")
    assert found.all()
    np.testing.assert_allclose(got, xy * np.float32([0.5, 2.0]), rtol=1e-5)
    assert (scaled["canvas_height"], scaled["canvas_width"]) == (800, 100)


# ------------------------------------------------------------------ COCO mappings


def test_coco17_to_openpose18_names_and_neck():
    coco = np.arange(34, dtype=np.float32).reshape(17, 2)  # point i at (2i, 2i+1)
    conf = np.linspace(0.1, 0.9, 17).astype(np.float32)
    xy, c = K.coco17_to_openpose18(coco, conf)
    assert xy.shape == (18, 2) and c.shape == (18,)
    coco_index = {K.NOSE: 0, K.L_EYE: 1, K.R_EYE: 2, K.L_EAR: 3, K.R_EAR: 4, K.L_SHOULDER: 5,
                  K.R_SHOULDER: 6, K.L_ELBOW: 7, K.R_ELBOW: 8, K.L_WRIST: 9, K.R_WRIST: 10, K.L_HIP: 11,
                  K.R_HIP: 12, K.L_KNEE: 13, K.R_KNEE: 14, K.L_ANKLE: 15, K.R_ANKLE: 16}
    for op, co in coco_index.items():
        np.testing.assert_array_equal(xy[op], coco[co])
        assert c[op] == conf[co]
    np.testing.assert_allclose(xy[K.NECK], (coco[5] + coco[6]) / 2)
    assert c[K.NECK] == min(conf[5], conf[6])


def test_coco17_to_openpose18_keeps_leading_dims():
    xy, c = K.coco17_to_openpose18(np.zeros((4, 17, 2)), np.ones((4, 17)))
    assert xy.shape == (4, 18, 2) and c.shape == (4, 18)
    with pytest.raises(ValueError):
        K.coco17_to_openpose18(np.zeros((18, 2)), np.ones(18))


def test_wholebody133_layout():
    xy = np.stack([np.arange(133), 1000 + np.arange(133)], -1).astype(np.float32)
    conf = np.ones(133, np.float32)
    conf[K.WHOLEBODY_RIGHT_HAND] = 0.1  # right hand not seen
    person = K.person_from_wholebody133(xy, conf)
    assert person["hand_right_keypoints_2d"] is None
    left, found = K.part_arrays(person, "left_hand")
    assert found.all() and left[0, 0] == 91 and left[-1, 0] == 111
    face, found = K.part_arrays(person, "face")
    assert found.all() and face[0, 0] == 23 and face[67, 0] == 90
    body, _ = K.part_arrays(person, "body")
    np.testing.assert_array_equal(face[68:], body[[K.R_EYE, K.L_EYE]])  # OpenPose's 70-point face
    assert body[K.R_SHOULDER, 0] == 6 and body[K.NECK, 0] == 5.5


# ------------------------------------------------------------------ drawing


def test_draw_black_background_limb_and_joint_colours():
    xy, _ = standing_person(128, 16, 224)
    img = draw_pose(frame_of(xy, height=256, width=256), 256, 256)
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    assert not img[:, :40].any() and not img[:, -40:].any()  # nothing away from the person
    nose = tuple(np.round(xy[K.NOSE]).astype(int))
    assert tuple(img[nose[1], nose[0]]) == BODY_COLORS[K.NOSE]
    # Midway along the right upper arm (limb 2: r-shoulder -> r-elbow), the limb colour at 60 %.
    mid = np.round((xy[K.R_SHOULDER] + xy[K.R_ELBOW]) / 2).astype(int)
    assert tuple(img[mid[1], mid[0]]) == tuple(int(c * LIMB_INTENSITY) for c in BODY_COLORS[2])
    colours = {tuple(p) for p in img.reshape(-1, 3)}
    assert set(BODY_COLORS) <= colours  # every joint drawn in its own colour


@pytest.mark.parametrize("height, width", [(512, 512), (512, 768)])
def test_draw_matches_controlnet_aux_at_512(height, width):
    """At a 512-pixel short side our skeleton is ControlNet's annotator drawing, pixel for pixel."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.open_pose import util
        from controlnet_aux.open_pose.body import Keypoint

    xy, _ = standing_person(256.3, 30.7, 440)
    reference = util.draw_bodypose(np.zeros((height, width, 3), np.uint8),
                                   [Keypoint(x / width, y / height) for x, y in xy])
    np.testing.assert_array_equal(draw_pose(frame_of(xy, height=height, width=width), height, width), reference)


class _ScaledSticks:
    """cv2 as controlnet_aux's draw_bodypose sees it, with its limb ellipses' half-width (4) times `factor`:
    comfyui_controlnet_aux's draw_bodypose with xinsr_stick_scaling=True is that very function with
    `stickwidth * stick_scale` there (src/custom_controlnet_aux/dwpose/util.py and open_pose/util.py; the
    joint discs keep radius 4), and the controlnet_aux wheel (0.0.10) has no such option."""

    def __init__(self, cv2, factor: int):
        self.cv2, self.factor = cv2, factor

    def ellipse2Poly(self, center, axes, angle, start, end, delta):
        return self.cv2.ellipse2Poly(center, (axes[0], axes[1] * self.factor), angle, start, end, delta)

    def __getattr__(self, name):
        return getattr(self.cv2, name)


# (height, width, comfyui_controlnet_aux's stick_scale: 1 if max(H, W) < 500 else min(2 + max(H, W) // 1000, 7))
XINSIR_SIZES = [(480, 360, 1), (768, 512, 2), (1080, 1920, 3)]


@pytest.mark.parametrize("height, width, factor", XINSIR_SIZES)
def test_xinsir_sticks_match_controlnet_aux_scaled_drawing(monkeypatch, height, width, factor):
    """With xinsir_sticks our skeleton is comfyui_controlnet_aux's scale_stick_for_xinsr_cn drawing at the
    image's size, pixel for pixel; without it, it is not (ours scales every stroke with the short side)."""
    import warnings

    import cv2

    from comfyui_diffbody.pipelines.pose.draw import xinsir_stick_scale

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.open_pose import util
        from controlnet_aux.open_pose.body import Keypoint

    assert xinsir_stick_scale(height, width) == factor
    monkeypatch.setattr(util, "cv2", _ScaledSticks(cv2, factor))
    xy, _ = standing_person(width / 2 + 0.3, height * 0.06 + 0.7, height * 0.86)
    reference = util.draw_bodypose(np.zeros((height, width, 3), np.uint8),
                                   [Keypoint(x / width, y / height) for x, y in xy])
    frame = frame_of(xy, height=height, width=width)
    np.testing.assert_array_equal(draw_pose(frame, height, width, xinsir_sticks=True), reference)
    assert not np.array_equal(draw_pose(frame, height, width), reference)


def test_xinsir_stick_scale_steps():
    from comfyui_diffbody.pipelines.pose.draw import xinsir_stick_scale

    assert [xinsir_stick_scale(side, 64) for side in (499, 500, 999, 1000, 1999, 2000, 5000, 9000)] == \
        [1, 2, 2, 3, 3, 4, 7, 7]
    assert xinsir_stick_scale(64, 1500) == xinsir_stick_scale(1500, 64) == 3  # the long side counts


def test_draw_every_person_and_skip_missing_keypoints():
    left, _ = standing_person(64, 16, 224)
    right, _ = standing_person(192, 16, 224)
    frame = frame_of(left, right, height=256, width=256)
    frame["people"][1]["pose_keypoints_2d"][3 * K.L_ANKLE: 3 * K.L_ANKLE + 3] = [0.0, 0.0, 0.0]
    img = draw_pose(frame, 256, 256)
    assert img[:, :128].any() and img[:, 128:].any()
    ankle = np.round(left[K.L_ANKLE]).astype(int)
    assert tuple(img[ankle[1], ankle[0]]) == BODY_COLORS[K.L_ANKLE]
    ankle = np.round(right[K.L_ANKLE]).astype(int)
    assert tuple(img[ankle[1], ankle[0]]) != BODY_COLORS[K.L_ANKLE]
    assert not img[0:3, 0:3].any()  # the missing keypoint is not drawn at (0, 0)


def test_draw_scales_to_the_requested_size_and_stroke_width():
    xy, _ = standing_person(128, 16, 224)
    frame = frame_of(xy, height=256, width=256)
    small, big = draw_pose(frame, 256, 256), draw_pose(frame, 1024, 1024)
    coverage_small = (small.any(-1)).mean()
    coverage_big = (big.any(-1)).mean()
    assert 0.5 < coverage_big / coverage_small < 2.0  # strokes grow with the image, not stay 4 px
    nose = np.round(xy[K.NOSE] * 4).astype(int)
    assert tuple(big[nose[1], nose[0]]) == BODY_COLORS[K.NOSE]


def test_draw_hands_and_face_only_when_asked():
    xy = np.zeros((133, 2), np.float32)
    xy[:, 0], xy[:, 1] = np.linspace(20, 230, 133), 128
    person = K.person_from_wholebody133(xy, np.ones(133))
    frame = K.make_frame([person], 256, 256)
    body_only = draw_pose(frame, 256, 256)
    everything = draw_pose(frame, 256, 256, hands=True, face=True)
    nothing = draw_pose(frame, 256, 256, body=False)
    assert not nothing.any()
    colours = {tuple(p) for p in everything.reshape(-1, 3)}
    assert (255, 255, 255) in colours and (0, 0, 255) in colours  # face dots, hand joints
    assert everything.any(-1).sum() > body_only.any(-1).sum()


# ------------------------------------------------------------------ DWPose


def test_dwpose_end_to_end_two_people(tiny_dwpose):
    from comfyui_diffbody.pipelines.pose.dwpose import DWPoseEstimator

    estimator = DWPoseEstimator(*tiny_dwpose, providers=["CPUExecutionProvider"])
    for h, w in ((480, 640), (240, 320)):
        frame = estimator(random_image(h, w))
        K.check_frame(frame)
        assert (frame["canvas_height"], frame["canvas_width"]) == (h, w)
        assert len(frame["people"]) == 2
        for person in frame["people"]:
            assert len(person["face_keypoints_2d"]) == 210
            assert len(person["hand_left_keypoints_2d"]) == len(person["hand_right_keypoints_2d"]) == 63
            for part in K.PART_KEYS:
                xy, found = K.part_arrays(person, part)
                assert found.all()
                assert (xy[:, 0] >= 0).all() and (xy[:, 0] < w).all()
                assert (xy[:, 1] >= 0).all() and (xy[:, 1] < h).all()
        centres = sorted(K.part_arrays(p, "body")[0][K.NECK, 0] / w for p in frame["people"])
        assert centres[0] < 0.5 < centres[1]  # one person in each half, as the detector reported
        assert draw_pose(frame, h, w).any()


def test_dwpose_keypoints_land_where_the_models_put_them(tiny_dwpose):
    """Letterbox ratio, box padding, crop affine and SimCC decoding, checked against hand arithmetic."""
    from comfyui_diffbody.pipelines.pose.dwpose import DWPoseEstimator
    from comfyui_diffbody.testing.tiny.dwpose import DEFAULT_BOXES, keypoint_template

    template = keypoint_template()  # crop pixels (288 x 384) where the tiny model peaks
    estimator = DWPoseEstimator(*tiny_dwpose, providers=["CPUExecutionProvider"])
    for h, w in ((480, 640), (240, 320)):
        ratio = 640 / w  # letterbox: the image is scaled to 640 wide
        people = sorted(estimator(random_image(h, w, seed=1))["people"],
                        key=lambda p: p["pose_keypoints_2d"][0])
        for person, (cx, cy, bw, bh) in zip(people, DEFAULT_BOXES):
            crop_h = bh * 1.25  # the box is taller than 288:384, so its padded height decides
            crop_w = crop_h * 288 / 384
            expected = np.stack([(template[:17, 0] / 288 - 0.5) * crop_w + cx,
                                 (template[:17, 1] / 384 - 0.5) * crop_h + cy], -1) / ratio
            body, found = K.part_arrays(person, "body")
            coco_xy, _ = K.coco17_to_openpose18(expected, np.ones(17))
            np.testing.assert_allclose(body[found], coco_xy[found], atol=2.5 / ratio + 0.5)


def test_dwpose_batched_pose_model_gives_the_same_frame(tiny_dwpose, tmp_path):
    from comfyui_diffbody.pipelines.pose.dwpose import DWPoseEstimator
    from comfyui_diffbody.testing.tiny.dwpose import write_tiny_dwpose

    det, pose = str(tmp_path / "det.onnx"), str(tmp_path / "pose.onnx")
    write_tiny_dwpose(det, pose, seed=0, pose_batch="batch")
    batched = DWPoseEstimator(det, pose, providers=["CPUExecutionProvider"])
    single = DWPoseEstimator(*tiny_dwpose, providers=["CPUExecutionProvider"])
    assert batched.pose_batches and not single.pose_batches
    image = random_image(480, 640, seed=3)
    a, b = batched(image), single(image)
    for pa, pb in zip(a["people"], b["people"]):
        np.testing.assert_allclose(pa["pose_keypoints_2d"], pb["pose_keypoints_2d"], atol=1e-3)


def test_dwpose_no_person_gives_no_skeleton(tmp_path):
    from comfyui_diffbody.pipelines.pose.dwpose import DWPoseEstimator
    from comfyui_diffbody.testing.tiny.dwpose import write_tiny_dwpose

    det, pose = str(tmp_path / "det.onnx"), str(tmp_path / "pose.onnx")
    write_tiny_dwpose(det, pose, boxes=())
    frame = DWPoseEstimator(det, pose, providers=["CPUExecutionProvider"])(random_image(200, 300))
    assert frame == {"people": [], "canvas_width": 300, "canvas_height": 200}


def test_dwpose_refuses_swapped_or_missing_files(tiny_dwpose, tmp_path):
    from comfyui_diffbody.pipelines.pose.dwpose import DWPoseEstimator

    det, pose = tiny_dwpose
    with pytest.raises(WrongModelFile):
        DWPoseEstimator(pose, det, providers=["CPUExecutionProvider"])
    with pytest.raises(MissingModelFile):
        DWPoseEstimator(str(tmp_path / "nope.onnx"), pose)
    estimator = DWPoseEstimator(det, pose, providers=["CPUExecutionProvider"])
    with pytest.raises(BadImage):
        estimator(np.zeros((32, 32, 3), np.float32))


def test_yolox_decode_and_nms():
    from comfyui_diffbody.pipelines.pose import dwpose

    raw = np.zeros((8400, 85), np.float32)
    anchor = 6400 + 1600 + 5 * 20 + 7  # stride 32, cell (x=7, y=5)
    raw[anchor, :4] = (0.5, 0.5, np.log(4), np.log(8))  # 128 x 256 box centred at (240, 176)
    raw[anchor, 4:6] = 0.9
    raw[anchor + 1, :4] = (0.3, 0.5, np.log(4), np.log(8))  # heavy overlap, lower score
    raw[anchor + 1, 4:6] = (0.9, 0.6)
    raw[100, 4] = 0.9  # confident object of another class
    raw[100, 6] = 0.9
    boxes = dwpose.person_boxes(raw, ratio=0.5)
    np.testing.assert_allclose(boxes, [[(240 - 64) * 2, (176 - 128) * 2, (240 + 64) * 2, (176 + 128) * 2]])


def test_crop_and_back_map_box_centre_to_crop_centre():
    from comfyui_diffbody.pipelines.pose import dwpose

    center, scale = dwpose.box_center_scale(np.array([100, 50, 200, 450]), aspect=288 / 384)
    assert scale[0] / scale[1] == pytest.approx(288 / 384)
    assert scale[1] == pytest.approx(400 * 1.25)
    m = dwpose.crop_matrix(center, scale, (288, 384))
    np.testing.assert_allclose(m @ np.array([150, 250, 1.0]), [144, 192], atol=1e-4)
    np.testing.assert_allclose(m @ np.array([150, 250 - 250, 1.0]), [144, 0], atol=1e-4)


# ------------------------------------------------------------------ OpenPose


def test_tiny_openpose_layout_matches_controlnet_aux_network():
    import torch

    from comfyui_diffbody.pipelines.pose.openpose import _controlnet_aux_openpose
    from comfyui_diffbody.testing.tiny.openpose import body_layers

    _, bodypose_model = _controlnet_aux_openpose()
    with torch.device("meta"):
        real = {k.split(".", 1)[1]: tuple(v.shape) for k, v in bodypose_model().state_dict().items()}
    ours = {f"{n}.weight": (co, ci, k, k) for n, ci, co, k in body_layers()}
    ours.update({f"{n}.bias": (co,) for n, ci, co, k in body_layers()})
    assert ours == real


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_openpose_on_tiny_weights(tmp_path, suffix):
    import torch

    from comfyui_diffbody.pipelines.pose.openpose import OpenPoseBodyEstimator
    from comfyui_diffbody.testing.tiny.openpose import tiny_body_state_dict, write_tiny_openpose

    path = str(tmp_path / f"body_pose_model{suffix}")
    write_tiny_openpose(path)
    estimator = OpenPoseBodyEstimator(path, detect_resolution=96)
    net = estimator.body.model
    state = tiny_body_state_dict()
    assert torch.equal(net.model0.conv1_1.weight, state["conv1_1.weight"])
    assert torch.equal(net.model6_2.Mconv7_stage6_L2.bias, state["Mconv7_stage6_L2.bias"])
    paf, heat = net(torch.zeros(1, 3, 64, 48))
    assert paf.shape == (1, 38, 8, 6) and heat.shape == (1, 19, 8, 6)
    frame = estimator(random_image(120, 90))
    assert K.check_frame(frame) == {"people": [], "canvas_width": 90, "canvas_height": 120}


def test_openpose_assembly_to_frame():
    from comfyui_diffbody.pipelines.pose.openpose import people_from_assembly

    candidate = np.array([[10, 20, 0.9, 0], [30, 40, 0.8, 1], [50, 60, 0.7, 2]], np.float64)
    subset = -np.ones((1, 20))
    subset[0, K.NOSE], subset[0, K.NECK], subset[0, K.L_HIP] = 0, 1, 2
    (person,) = people_from_assembly(candidate, subset, sx=2.0, sy=0.5)
    xy, found = K.part_arrays(person, "body")
    assert found.nonzero()[0].tolist() == [K.NOSE, K.NECK, K.L_HIP]
    np.testing.assert_allclose(xy[[K.NOSE, K.NECK, K.L_HIP]], [[20, 10], [60, 20], [100, 30]])


def test_openpose_refuses_pickled_code_and_wrong_files(tmp_path, tiny_dwpose):
    import torch

    from comfyui_diffbody.pipelines.pose.openpose import OpenPoseBodyEstimator

    evil = tmp_path / "body_pose_model.pth"
    with open(evil, "wb") as f:
        pickle.dump({"conv1_1.weight": os.system}, f, protocol=2)  # needs code to unpickle
    with pytest.raises(WrongModelFile):
        OpenPoseBodyEstimator(str(evil))
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(WrongModelFile, match="conv1_1"):
        OpenPoseBodyEstimator(str(other))
    with pytest.raises(MissingModelFile):
        OpenPoseBodyEstimator(str(tmp_path / "missing.pth"))


# ------------------------------------------------------------------ MMPose, dispatcher


def test_mmpose_missing_raises_missing_dependency(monkeypatch):
    monkeypatch.setitem(sys.modules, "mmpose", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "mmpose.apis", None)
    with pytest.raises(MissingDependency) as err:
        make_estimator("mmpose", {"config": "a.py", "checkpoint": "b.pth"})
    text = str(err.value)
    assert "mim install" in text and "mmcv" in text and "dwpose" in text


def test_mmpose_keypoint_layouts():
    from comfyui_diffbody.pipelines.pose.mmpose_backend import person_from_keypoints

    body = person_from_keypoints(np.arange(34, dtype=np.float32).reshape(17, 2) + 1, np.ones(17))
    assert body["face_keypoints_2d"] is None and len(body["pose_keypoints_2d"]) == 54
    whole = person_from_keypoints(np.ones((133, 2), np.float32), np.ones(133))
    assert len(whole["face_keypoints_2d"]) == 210
    with pytest.raises(WrongModelFile):
        person_from_keypoints(np.ones((26, 2), np.float32), np.ones(26))


def test_make_estimator_errors():
    with pytest.raises(UnknownBackend, match="dwpose"):
        make_estimator("alphapose", {})
    with pytest.raises(ValueError):
        make_estimator("", {})
    with pytest.raises(DiffBodyError, match="pose"):
        make_estimator("dwpose", {"det": "yolox_l.onnx"})
    assert BACKENDS == ("dwpose", "openpose", "mmpose", "mediapipe")


def test_make_estimator_dwpose_and_estimate_batch(tiny_dwpose):
    det, pose = tiny_dwpose
    estimator = make_estimator("dwpose", {"det": det, "pose": pose}, device="cpu")
    assert estimator.pose.get_providers() == ["CPUExecutionProvider"]
    calls = []
    images = [random_image(480, 640, seed=s) for s in range(2)] + [random_image(240, 320)]
    frames = estimate_batch(estimator, images, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert [(f["canvas_height"], f["canvas_width"]) for f in frames] == [(480, 640), (480, 640), (240, 320)]


def test_pose_package_imports_stay_light():
    heavy = ("torch", "onnxruntime", "cv2", "controlnet_aux", "mediapipe")
    code = ("import sys; import comfyui_diffbody.pipelines.pose.backends, comfyui_diffbody.pipelines.pose.draw; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
