"""MediaPipe pose backend: the 33 -> 18 mapping and the multi-person search here, the real model in its own venv.

mediapipe 0.10.21 pins numpy 1.26 and must never enter this (numpy 2.x) environment, so:
- the fast tests below run without mediapipe: synthetic landmarks for the mapping, and a small fake
  `mediapipe` module (faces are white squares) for the crop/paint-out logic of the people search;
- the `mediapipe_venv` test builds (once, cached) the separate venv with scripts/mediapipe_venv.sh
  and runs tests/mediapipe_pose_check.py there on scikit-image's astronaut photo, with OpenCV's
  Haar face cascade as an independent witness. The first build downloads ~300 MB (a minute or
  two); deselect with `-m "not mediapipe_venv"`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from comfyui_diffbody.models.errors import MissingDependency
from comfyui_diffbody.pipelines.pose import keypoints as kp
from comfyui_diffbody.pipelines.pose import mediapipe_backend as mb

REPO = Path(__file__).resolve().parent.parent

# MediaPipe Pose landmark indices (its documented PoseLandmark enum) of each OpenPose-18 keypoint,
# written out independently of the backend's table. MediaPipe's LEFT/RIGHT are the person's own.
MEDIAPIPE_INDEX = {
    kp.NOSE: 0, kp.R_SHOULDER: 12, kp.R_ELBOW: 14, kp.R_WRIST: 16, kp.L_SHOULDER: 11, kp.L_ELBOW: 13,
    kp.L_WRIST: 15, kp.R_HIP: 24, kp.R_KNEE: 26, kp.R_ANKLE: 28, kp.L_HIP: 23, kp.L_KNEE: 25,
    kp.L_ANKLE: 27, kp.R_EYE: 5, kp.L_EYE: 2, kp.R_EAR: 8, kp.L_EAR: 7,
}


def distinct_landmarks() -> np.ndarray:
    """33 landmarks (x, y as 0..1 fractions, visibility), every one at its own place and visibility."""
    i = np.arange(33, dtype=np.float32)
    return np.stack([0.05 + i * 0.025, 0.9 - i * 0.02, 0.5 + i * 0.015], axis=1)


# ---------------------------------------------------------------- 33 -> 18 mapping (no mediapipe)

def test_each_openpose_keypoint_comes_from_the_right_mediapipe_landmark():
    landmarks = distinct_landmarks()
    xy, scores = mb.openpose18_from_mediapipe33(landmarks, (0, 0, 200, 100))
    assert xy.shape == (18, 2) and scores.shape == (18,)
    for openpose, mediapipe in MEDIAPIPE_INDEX.items():
        x, y, visibility = landmarks[mediapipe]
        np.testing.assert_allclose(xy[openpose], [x * 200, y * 100], rtol=1e-6, err_msg=kp.BODY_NAMES[openpose])
        assert scores[openpose] == pytest.approx(visibility), kp.BODY_NAMES[openpose]


def test_neck_is_the_midpoint_of_the_shoulders_with_the_weaker_score():
    landmarks = distinct_landmarks()
    xy, scores = mb.openpose18_from_mediapipe33(landmarks, (0, 0, 200, 100))
    np.testing.assert_allclose(xy[kp.NECK], (xy[kp.R_SHOULDER] + xy[kp.L_SHOULDER]) / 2)
    assert scores[kp.NECK] == pytest.approx(min(landmarks[11, 2], landmarks[12, 2]))


def test_person_facing_the_camera_has_its_right_shoulder_on_the_image_left():
    landmarks = distinct_landmarks()
    landmarks[12, :2] = (0.3, 0.4)  # MediaPipe RIGHT_SHOULDER: the person's right, image left
    landmarks[11, :2] = (0.7, 0.4)
    xy, _ = mb.openpose18_from_mediapipe33(landmarks, (0, 0, 100, 100))
    assert xy[kp.R_SHOULDER][0] < xy[kp.NECK][0] < xy[kp.L_SHOULDER][0]


def test_landmarks_of_a_crop_map_back_into_image_pixels():
    landmarks = distinct_landmarks()
    box = (300, 40, 500, 440)  # a 200 x 400 crop at (300, 40)
    xy, _ = mb.openpose18_from_mediapipe33(landmarks, box)
    x, y, _ = landmarks[0]
    np.testing.assert_allclose(xy[kp.NOSE], [300 + x * 200, 40 + y * 400], rtol=1e-6)


def test_keypoints_outside_what_the_model_saw_are_not_found():
    landmarks = distinct_landmarks()
    landmarks[16, :2] = (1.2, 0.5)  # right wrist guessed beyond the crop's right edge
    landmarks[27, :2] = (0.5, -0.1)  # left ankle above it
    _, scores = mb.openpose18_from_mediapipe33(landmarks, (0, 0, 64, 64))
    assert scores[kp.R_WRIST] == 0 and scores[kp.L_ANKLE] == 0
    assert scores[kp.L_WRIST] > 0


def test_low_visibility_keypoints_are_missing_in_the_frame():
    landmarks = distinct_landmarks()
    landmarks[:, 2] = 0.9
    landmarks[14, 2] = 0.2  # right elbow hidden
    landmarks[11, 2] = 0.4  # left shoulder unsure: the neck goes with it
    xy, scores = mb.openpose18_from_mediapipe33(landmarks, (0, 0, 64, 64))
    body = np.asarray(kp.person_from_openpose18(xy, scores, threshold=0.5)["pose_keypoints_2d"]).reshape(18, 3)
    missing = {i for i in range(18) if body[i, 2] == 0}
    assert missing == {kp.R_ELBOW, kp.L_SHOULDER, kp.NECK}
    assert np.all(body[[kp.R_ELBOW, kp.L_SHOULDER, kp.NECK]] == 0)


def test_wrong_landmark_shape_is_refused():
    with pytest.raises(ValueError, match="33"):
        mb.openpose18_from_mediapipe33(np.zeros((17, 3)), (0, 0, 10, 10))


# ---------------------------------------------------------------- without mediapipe

def test_module_imports_without_mediapipe_or_opencv():
    code = ("import sys, comfyui_diffbody.pipelines.pose.mediapipe_backend; "
            "print(sorted(m for m in ('mediapipe', 'cv2', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_mediapipe_says_how_to_install_it_and_warns_about_numpy(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # makes `import mediapipe` fail, installed or not
    with pytest.raises(MissingDependency) as error:
        mb.MediaPipePoseEstimator()
    message = str(error.value)
    assert "pip install mediapipe==0.10.21" in message
    assert "numpy 1.26" in message and "downgrade" in message


def test_mediapipe_without_the_legacy_solutions_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", types.SimpleNamespace(__version__="1.0.0"))
    with pytest.raises(MissingDependency, match="mp.solutions.pose"):
        mb.MediaPipePoseEstimator()


# ---------------------------------------------------------------- people search, with a fake mediapipe
# Faces are white squares of side S on a dark canvas. The fake face detector reports each square; the
# fake Pose, like the real one, returns ONE person: here the lowest white square in its input (the
# real detector's pick is just as blind to which person the caller wanted), with a body below it.
# Like the real Pose (which sees its input at 224 pixels), it misses faces that are small relative
# to its input, so in a large image only crops find everybody.

WHITE, S = 250, 20
POSE_MIN_FACE = 0.08  # of the input's long side


def white_squares(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    import cv2

    white = np.all(image >= WHITE, axis=2).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(white)
    return [(x, y, x + w, y + h) for x, y, w, h, _ in stats[1:count]]


class FakeFaceDetection:
    min_face = 0.0  # like the real one (192-pixel input), it can miss faces small relative to its input

    def __init__(self, model_selection, min_detection_confidence):
        self.model_selection = model_selection

    def process(self, image):
        h, w = image.shape[:2]
        detections = [types.SimpleNamespace(score=[0.9], location_data=types.SimpleNamespace(
            relative_bounding_box=types.SimpleNamespace(xmin=x0 / w, ymin=y0 / h, width=(x1 - x0) / w,
                                                        height=(y1 - y0) / h)))
            for x0, y0, x1, y1 in white_squares(image) if x1 - x0 >= self.min_face * max(h, w)]
        return types.SimpleNamespace(detections=detections or None)

    def close(self):
        pass


class FakePose:
    calls = 0

    def __init__(self, static_image_mode, model_complexity, enable_segmentation, min_detection_confidence):
        assert static_image_mode and enable_segmentation

    def process(self, image):
        FakePose.calls += 1
        h, w = image.shape[:2]
        squares = [b for b in white_squares(image) if b[2] - b[0] >= POSE_MIN_FACE * max(h, w)]
        if not squares:
            return types.SimpleNamespace(pose_landmarks=None, segmentation_mask=None)
        x0, y0, x1, y1 = max(squares, key=lambda b: b[1])
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        points = np.zeros((33, 3), np.float32)
        points[:, :2] = cx, cy + 3 * S
        points[:, 2] = 0.9
        points[0, :2] = cx, cy
        points[[2, 7], :2] = (cx + 4, cy - 3), (cx + 9, cy)  # person's left eye/ear: image right
        points[[5, 8], :2] = (cx - 4, cy - 3), (cx - 9, cy)
        points[11, :2], points[12, :2] = (cx + S, cy + 1.5 * S), (cx - S, cy + 1.5 * S)
        points[23, :2], points[24, :2] = (cx + S / 2, cy + 4 * S), (cx - S / 2, cy + 4 * S)
        points[:, 0] /= w
        points[:, 1] /= h
        mask = np.zeros((h, w), np.float32)
        mask[max(0, y0):min(h, int(cy + 5 * S)), max(0, int(cx - 1.5 * S)):min(w, int(cx + 1.5 * S))] = 1.0
        landmark = [types.SimpleNamespace(x=float(x), y=float(y), visibility=float(v)) for x, y, v in points]
        return types.SimpleNamespace(pose_landmarks=types.SimpleNamespace(landmark=landmark), segmentation_mask=mask)

    def close(self):
        pass


@pytest.fixture
def fake_estimator(monkeypatch):
    solutions = types.SimpleNamespace(pose=types.SimpleNamespace(Pose=FakePose),
                                      face_detection=types.SimpleNamespace(FaceDetection=FakeFaceDetection))
    monkeypatch.setitem(sys.modules, "mediapipe", types.SimpleNamespace(solutions=solutions))
    FakePose.calls = 0
    with mb.MediaPipePoseEstimator() as estimator:
        yield estimator


def canvas_with_faces(height: int, width: int, centres: list[tuple[int, int]]) -> np.ndarray:
    image = np.full((height, width, 3), 40, np.uint8)
    for cx, cy in centres:
        image[cy - S // 2: cy + S // 2, cx - S // 2: cx + S // 2] = 255
    return image


def found_noses(frame) -> list[tuple[float, float]]:
    return sorted((p["pose_keypoints_2d"][0], p["pose_keypoints_2d"][1]) for p in frame["people"]
                  if p["pose_keypoints_2d"][2] > 0)


def test_one_person_gives_one_skeleton_in_image_pixels(fake_estimator):
    frame = fake_estimator(canvas_with_faces(240, 200, [(100, 50)]))
    assert frame["canvas_width"] == 200 and frame["canvas_height"] == 240
    assert len(frame["people"]) == 1
    assert found_noses(frame) == [pytest.approx((100, 50), abs=1)]
    kp.check_frame(frame)


def test_people_side_by_side_are_all_found_once(fake_estimator):
    centres = [(60, 50), (200, 60), (340, 50)]
    frame = fake_estimator(canvas_with_faces(240, 400, centres))
    assert found_noses(frame) == [pytest.approx(c, abs=1) for c in centres]


def test_a_person_below_another_does_not_steal_the_upper_ones_crop(fake_estimator):
    # A face's crop reaches far down (the body); the fake Pose prefers the lower face, as the real
    # one did on a 2x2 grid of astronauts. Hiding the other faces keeps each crop on its own person.
    centres = [(60, 30), (160, 30), (60, 200), (160, 200)]
    frame = fake_estimator(canvas_with_faces(400, 220, centres))
    assert found_noses(frame) == [pytest.approx(c, abs=1) for c in sorted(centres)]


def test_small_faces_of_a_wide_picture_are_found_in_windows(monkeypatch, fake_estimator):
    # Faces of 20 px in a 1800 px wide picture are 1 % of what the face detector sees of the whole picture:
    # too small for it (as for the real one); in the 300 px windows they are 7 %.
    monkeypatch.setattr(FakeFaceDetection, "min_face", 0.06)
    centres = [(150, 50), (700, 60), (1250, 50), (1650, 70)]
    image = canvas_with_faces(300, 1800, centres)
    assert fake_estimator._faces_in(image) == []
    assert len(fake_estimator._face_boxes(image)) == 4  # each once, though windows overlap
    assert found_noses(fake_estimator(image)) == [pytest.approx(c, abs=1) for c in centres]


def test_face_windows_cover_the_picture_at_each_scale():
    for height, width in [(300, 1800), (1024, 768), (4000, 3000)]:
        windows = mb.face_windows(height, width)
        for side in {x1 - x0 for x0, _, x1, _ in windows}:
            covered = np.zeros((height, width), bool)
            for x0, y0, x1, y1 in windows:
                assert x1 - x0 == y1 - y0 and 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
                if x1 - x0 == side:
                    covered[y0:y1, x0:x1] = True
            assert covered.all()
    assert mb.face_windows(200, 200) == []  # small pictures: the whole picture is enough


def test_no_person_gives_an_empty_frame(fake_estimator):
    frame = fake_estimator(np.full((120, 160, 3), 40, np.uint8))
    assert frame == {"people": [], "canvas_width": 160, "canvas_height": 120}


def test_max_people_bounds_the_search(monkeypatch, fake_estimator):
    fake_estimator.max_people = 2
    frame = fake_estimator(canvas_with_faces(240, 400, [(60, 50), (200, 60), (340, 50)]))
    assert len(frame["people"]) == 2


def test_a_person_found_again_on_pixels_already_taken_is_dropped(fake_estimator):
    # A real model can re-find the remains of a painted-out person; such a find lies on taken pixels.
    image = canvas_with_faces(240, 200, [(100, 50)])
    nobody_hidden = np.zeros((240, 200), bool)
    first = fake_estimator._estimate(image, (0, 0, 200, 240), nobody_hidden, nobody_hidden)
    assert first is not None and first.mask[50, 100]
    assert fake_estimator._estimate(image, (0, 0, 200, 240), nobody_hidden, first.mask) is None


def test_a_person_without_segmentation_is_still_found_only_once(monkeypatch, fake_estimator):
    # With no segmentation mask, the found keypoints alone must mark the person as taken, or the
    # whole-image pass would find the same person again and again up to max_people.
    real_process = FakePose.process

    def no_mask(self, image):
        result = real_process(self, image)
        result.segmentation_mask = None
        return result

    monkeypatch.setattr(FakePose, "process", no_mask)
    frame = fake_estimator(canvas_with_faces(240, 200, [(100, 50)]))
    assert len(frame["people"]) == 1


def test_candidates_of_people_already_found_are_skipped(fake_estimator):
    image = canvas_with_faces(240, 200, [(100, 50)])
    nobody = np.zeros((240, 200), bool)
    person = fake_estimator._estimate(image, (0, 0, 200, 240), nobody, nobody)
    own_face = mb.Candidate((90, 40, 110, 60), "face")
    other_face = mb.Candidate((150, 40, 170, 60), "face")
    own_body = mb.Candidate((70, 30, 130, 160), "body")
    assert fake_estimator._explained(own_face, [person], person.mask)
    assert fake_estimator._explained(own_body, [person], person.mask)
    assert not fake_estimator._explained(other_face, [person], person.mask)


@pytest.mark.parametrize("image", [np.zeros((64, 64), np.uint8), np.zeros((64, 64, 4), np.uint8),
                                   np.zeros((64, 64, 3), np.float32)], ids=["grey", "rgba", "float"])
def test_non_rgb_uint8_input_is_refused(fake_estimator, image):
    from comfyui_diffbody.pipelines.image import BadImage

    with pytest.raises(BadImage, match="uint8 RGB"):
        fake_estimator(image)


# ---------------------------------------------------------------- the real model, in its own venv

@pytest.fixture(scope="module")
def mediapipe_check() -> dict:
    """Build or reuse the mediapipe venv, run the check script there, return its JSON."""
    build = subprocess.run(["bash", str(REPO / "scripts" / "mediapipe_venv.sh")], capture_output=True, text=True)
    assert build.returncode == 0, f"building the mediapipe venv failed:\n{build.stderr[-4000:]}"
    python = build.stdout.strip().splitlines()[-1]
    env = {**os.environ, "PYTHONPATH": ""}  # nothing of this venv's site-packages may leak in
    run = subprocess.run([python, str(REPO / "tests" / "mediapipe_pose_check.py"), "--repo", str(REPO)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, f"the mediapipe check failed:\n{run.stderr[-4000:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.mediapipe_venv
@pytest.mark.timeout(1800)
def test_real_mediapipe_finds_the_astronauts_nose_in_her_face(mediapipe_check):
    assert mediapipe_check["mediapipe"] == "0.10.21" and mediapipe_check["numpy"] == "1.26.4"
    one = mediapipe_check["one_person"]
    assert one["people"] == 1
    assert len(one["face_boxes"]) == 1, "the Haar cascade should see exactly one face"
    assert one["nose_in_face"], f"nose {one['noses']} not inside the Haar face box {one['face_boxes']}"
    assert one["skeleton_shape"] == one["input_shape"] and one["skeleton_dtype"] == "uint8"
    assert sum(one["drawn_pixels_left_right"]) > 1000, "the skeleton image is (nearly) empty"


@pytest.mark.mediapipe_venv
@pytest.mark.timeout(1800)
def test_real_mediapipe_draws_both_people_of_a_two_person_image(mediapipe_check):
    two = mediapipe_check["two_people"]
    assert two["people"] == 2
    assert len(two["face_boxes"]) == 2
    # One nose in each face box: two skeletons, each on its own person.
    assert two["noses_per_face"] == [1, 1], f"noses {two['noses']}, face boxes {two['face_boxes']}"
    assert two["skeleton_shape"] == two["input_shape"]
    left, right = two["drawn_pixels_left_right"]
    assert left > 1000 and right > 1000, "each half of the canvas should carry a skeleton"
