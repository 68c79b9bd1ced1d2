"""Offline body pose with MediaPipe's legacy Pose solution (mediapipe 0.10.21).

Why this backend: the weights it uses (pose_detection.tflite, pose_landmark_full.tflite and the
full-range face detector) ship inside the mediapipe 0.10.21 wheel, so it runs with nothing to
download. mediapipe is an optional extra, never a requirement: 0.10.21 (the last release with
`mp.solutions.pose`) pins numpy 1.26, protobuf 4.25 and opencv-contrib 4.11 and pulls jax, which
would downgrade a ComfyUI environment on numpy 2.x. `scripts/mediapipe_venv.sh` builds a separate
venv for it.

Output: one POSE_KEYPOINT frame (see keypoints.py: pixel coordinates, c = 1.0 found / 0.0 missing),
body keypoints only. MediaPipe's 33 landmarks map onto the 18 OpenPose keypoints through COCO-17
(the neck is the mean of the shoulders); MediaPipe's LEFT/RIGHT are the person's own sides, as in
OpenPose. A keypoint counts as found when its visibility is at least `min_confidence` and it lies
inside the image region the model saw (the model also guesses joints outside its input).

Several people: the legacy Pose solution finds ONE person per image, the one its detector ranks
first. To find more, candidate regions come from MediaPipe's full-range face detector (on the whole
image and on overlapping square windows of it, `face_windows`: the detector sees 192 pixels, so in a
wide group photo or a collage the faces are too small for it otherwise) and OpenCV's
HOG people detector; each region is cropped, people already found are painted out (grey, using
their segmentation masks), Pose runs on the crop and its landmarks are mapped back. A last pass on
the whole image, everyone found painted out, picks up a person no detector proposed. Limits: a
second person is found only if their face is detected (roughly frontal, face at least ~20 pixels
in a 192-pixel view of the image, i.e. up to about 5 m away) or HOG sees their whole upright body
(standing, at least 128 pixels tall in the image scaled to 640 pixels), or the last pass finds
them; people overlapping each other strongly can be missed; at most `max_people`. For crowds use
a multi-person backend (DWPose).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ...models.errors import MissingDependency, MissingModelFile
from ..image import BadImage
from .keypoints import L_EAR, L_EYE, NOSE, R_EAR, R_EYE, Frame, coco17_to_openpose18, make_frame, \
    person_from_openpose18

logger = logging.getLogger(__name__)

MEDIAPIPE_REQUIREMENT = "mediapipe==0.10.21"
NUM_MEDIAPIPE = 33
# MediaPipe-33 index of each COCO-17 keypoint (nose, l/r eye, l/r ear, l/r shoulder, l/r elbow,
# l/r wrist, l/r hip, l/r knee, l/r ankle). MediaPipe's eyes are the pupil centres (2, 5).
MEDIAPIPE33_FOR_COCO17 = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
HEAD_KEYPOINTS = (NOSE, R_EYE, L_EYE, R_EAR, L_EAR)
# Only model_complexity=1 ("full") is inside the wheel; 0 and 2 are downloaded by mediapipe.
BUNDLED_COMPLEXITY = 1
_LANDMARK_FILES = {0: "pose_landmark_lite.tflite", 1: "pose_landmark_full.tflite", 2: "pose_landmark_heavy.tflite"}

HOG_LONG_SIDE = 640  # HOG runs on a copy this size: its cost grows with the pixel count
HOG_MIN_WEIGHT = 0.5  # SVM margin below which HOG boxes are mostly clutter
PAINT_GREY = 127
FACE_WINDOW_MIN = 256  # smallest window the face detector is run on (see face_windows)
FACE_DUPLICATE_IOU = 0.3  # a face found again in an overlapping window

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels, x1/y1 exclusive


def import_mediapipe():
    """The mediapipe module, or MissingDependency telling how to install it and what it costs."""
    try:
        import mediapipe as mp

        mp.solutions.pose  # noqa: B018  (1.x has no legacy solutions)
    except (ImportError, AttributeError) as error:
        raise MissingDependency(
            f"The MediaPipe pose backend needs {MEDIAPIPE_REQUIREMENT} (the last release with the legacy "
            f"'mp.solutions.pose' and its bundled weights), which could not be imported ({error}). "
            f"Install it with `pip install {MEDIAPIPE_REQUIREMENT}` (the pack's extra `mediapipe` in "
            "pyproject.toml). WARNING: it pins numpy 1.26.4, protobuf 4.25 and "
            "opencv-contrib-python 4.11 and pulls jax, so in a ComfyUI environment on numpy 2.x it downgrades "
            "numpy and can break other nodes; prefer a separate venv (scripts/mediapipe_venv.sh) or the "
            "DWPose backend, which needs no such pins."
        ) from error
    return mp


def openpose18_from_mediapipe33(landmarks: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe landmarks of one person -> OpenPose-18 pixel keypoints (18,2) and scores (18,).

    `landmarks` is (33,3): x and y as fractions of `box` (the image region the model saw), then
    visibility. Keypoints outside that region get score 0: the model guesses them, it did not see them.
    """
    landmarks = np.asarray(landmarks, dtype=np.float32)
    if landmarks.shape != (NUM_MEDIAPIPE, 3):
        raise ValueError(f"expected (33,3) MediaPipe landmarks (x, y, visibility), got {landmarks.shape}")
    x0, y0, x1, y1 = box
    coco = landmarks[list(MEDIAPIPE33_FOR_COCO17)]
    inside = np.all((coco[:, :2] >= 0.0) & (coco[:, :2] <= 1.0), axis=1)
    xy = coco[:, :2] * np.float32([x1 - x0, y1 - y0]) + np.float32([x0, y0])
    scores = np.where(inside, np.clip(coco[:, 2], 0.0, 1.0), 0.0).astype(np.float32)
    return coco17_to_openpose18(xy, scores)


def landmarks_array(pose_landmarks) -> np.ndarray:
    """A MediaPipe NormalizedLandmarkList -> (33,3) float32 (x, y, visibility)."""
    return np.array([(p.x, p.y, p.visibility) for p in pose_landmarks.landmark], dtype=np.float32)


def clip_box(x0: float, y0: float, x1: float, y1: float, height: int, width: int) -> Box:
    return (int(max(0, np.floor(x0))), int(max(0, np.floor(y0))),
            int(min(width, np.ceil(x1))), int(min(height, np.ceil(y1))))


def expand_box(box: Box, factor: float, height: int, width: int) -> Box:
    """The box grown by `factor` around its centre, clipped to the image."""
    x0, y0, x1, y1 = box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * factor / 2, (y1 - y0) * factor / 2
    return clip_box(cx - hw, cy - hh, cx + hw, cy + hh, height, width)


def body_box_from_face(face: Box, height: int, width: int) -> Box:
    """Where the body of a face is likely to be: a standing adult is about 7.5 heads tall and
    spans up to ~6 face widths with the arms out."""
    x0, y0, x1, y1 = face
    fw, fh = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    return clip_box(cx - 3 * fw, y0 - fh, cx + 3 * fw, y1 + 8 * fh, height, width)


def face_windows(height: int, width: int) -> list[Box]:
    """Square windows the face detector also looks at, beyond the whole image. It sees its input at 192 pixels,
    so the faces of a wide or large picture (a group photo, a collage) shrink below what it finds: windows of
    the short side, then of half that and so on while at least FACE_WINDOW_MIN and a sixth of the long side,
    each overlapping its neighbours by half."""
    windows: list[Box] = []
    side = min(height, width)
    while side >= max(FACE_WINDOW_MIN, max(height, width) / 6):
        step = side // 2
        for y in sorted({min(y, height - side) for y in range(0, height - side + step, step)}):
            for x in sorted({min(x, width - side) for x in range(0, width - side + step, step)}):
                if (side, side) != (height, width):
                    windows.append((x, y, x + side, y + side))
        side //= 2
    return windows


def box_iou(a: Box, b: Box) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def boxes_overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def points_in_box(xy: np.ndarray, box: Box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)


def keypoint_patches(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A mask of squares around the keypoints, each a tenth of the person's keypoint extent wide."""
    mask = np.zeros(shape, bool)
    if len(xy) == 0:
        return mask
    radius = max(2, int(0.05 * float(np.ptp(xy, axis=0).max())))
    for x, y in np.round(xy).astype(int):
        mask[max(0, y - radius):max(0, y + radius + 1), max(0, x - radius):max(0, x + radius + 1)] = True
    return mask


def fraction_taken(box: Box, taken: np.ndarray) -> float:
    x0, y0, x1, y1 = box
    region = taken[y0:y1, x0:x1]
    return float(region.mean()) if region.size else 0.0


@dataclass
class FoundPerson:
    xy: np.ndarray  # (18,2) image pixels
    scores: np.ndarray  # (18,) visibility, 0 for keypoints outside the region the model saw
    mask: np.ndarray  # (H,W) bool, the person's segmentation


@dataclass(frozen=True)
class Candidate:
    box: Box
    kind: str  # "face" or "body"


class MediaPipePoseEstimator:
    """Body keypoints of the people in an RGB image, with MediaPipe's bundled (offline) Pose model.

    `model_complexity` 1 is the model inside the wheel; 0 and 2 are downloaded by mediapipe on first
    use (MissingModelFile offline). `min_confidence` is both the detector's threshold and the
    visibility a keypoint needs to count as found. `max_people` bounds the search (see module doc).
    """

    def __init__(self, model_complexity: int = BUNDLED_COMPLEXITY, min_confidence: float = 0.5, *,
                 max_people: int = 8):
        if model_complexity not in _LANDMARK_FILES:
            raise ValueError(f"model_complexity must be 0, 1 or 2, got {model_complexity}")
        if not 0.0 < min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in (0, 1], got {min_confidence}")
        if max_people < 1:
            raise ValueError(f"max_people must be at least 1, got {max_people}")
        mp = import_mediapipe()
        import cv2

        self.min_confidence = float(min_confidence)
        self.max_people = int(max_people)
        self._pose = self._make_pose(mp, model_complexity)
        self._faces = mp.solutions.face_detection.FaceDetection(model_selection=1,  # full range: up to ~5 m
                                                                min_detection_confidence=self.min_confidence)
        self._hog = self._make_hog(cv2)

    @staticmethod
    def _make_hog(cv2):
        """OpenCV's HOG people detector, or None: OpenCV 5 moved HOG out of the main package (the
        opencv-contrib 4.11 that mediapipe pins still has it). Without it only faces propose people."""
        if not hasattr(cv2, "HOGDescriptor"):
            logger.warning("OpenCV %s has no HOG people detector; the MediaPipe pose backend looks for "
                           "additional people by their faces only", cv2.__version__)
            return None
        hog = cv2.HOGDescriptor()
        hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        return hog

    def _make_pose(self, mp, model_complexity: int):
        try:
            return mp.solutions.pose.Pose(static_image_mode=True, model_complexity=model_complexity,
                                          enable_segmentation=True,
                                          min_detection_confidence=self.min_confidence)
        except OSError as error:  # urllib's URLError: the lite/heavy model is fetched from Google
            raise MissingModelFile(
                f"mediapipe could not download {_LANDMARK_FILES[model_complexity]} for model_complexity="
                f"{model_complexity} ({error}). Only model_complexity={BUNDLED_COMPLEXITY} ships inside the "
                "mediapipe wheel and works offline; use it, or run once with internet access."
            ) from error

    def close(self) -> None:
        self._pose.close()
        self._faces.close()

    def __enter__(self) -> "MediaPipePoseEstimator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, image: np.ndarray) -> Frame:
        """(H,W,3) uint8 RGB -> POSE_KEYPOINT frame with one entry per person found."""
        image = _checked_rgb(image)
        height, width = image.shape[:2]
        people = self.find_people(image)
        frame_people = [person_from_openpose18(p.xy, p.scores, threshold=self.min_confidence) for p in people]
        return make_frame(frame_people, height, width)

    def find_people(self, image: np.ndarray) -> list[FoundPerson]:
        """Candidates first (faces, then HOG bodies, larger first), then the whole image, until a pass
        finds nobody new."""
        height, width = image.shape[:2]
        people: list[FoundPerson] = []
        taken = np.zeros((height, width), bool)
        candidates = self.candidates(image)
        faces = [c.box for c in candidates if c.kind == "face"]
        for candidate in candidates:
            if len(people) >= self.max_people:
                return people
            if self._explained(candidate, people, taken):
                continue
            region = body_box_from_face(candidate.box, height, width) if candidate.kind == "face" \
                else expand_box(candidate.box, 1.5, height, width)
            # Pose's detector is anchored on faces: hiding the other faces in the crop keeps it on
            # this candidate rather than on a neighbour whose body reaches into the crop.
            hidden = taken.copy()
            for face in faces:
                if not boxes_overlap(face, candidate.box):
                    x0, y0, x1, y1 = expand_box(face, 1.2, height, width)
                    hidden[y0:y1, x0:x1] = True
            person = self._estimate(image, region, hidden, taken)
            if person is not None and self._belongs_to(person, candidate) and not self._known(person, people):
                people.append(person)
                taken |= person.mask
        while len(people) < self.max_people:
            person = self._estimate(image, (0, 0, width, height), taken, taken)
            if person is None or self._known(person, people):
                break
            people.append(person)
            taken |= person.mask
        return people

    def candidates(self, image: np.ndarray) -> list[Candidate]:
        faces = [Candidate(box, "face") for box in self._face_boxes(image)]
        bodies = [Candidate(box, "body") for box in self._hog_boxes(image)]

        def area(c: Candidate) -> int:
            return (c.box[2] - c.box[0]) * (c.box[3] - c.box[1])

        return sorted(faces, key=area, reverse=True) + sorted(bodies, key=area, reverse=True)

    def _face_boxes(self, image: np.ndarray) -> list[Box]:
        """Faces in the whole image and in the windows of `face_windows`, each face once."""
        height, width = image.shape[:2]
        boxes: list[Box] = []
        for x0, y0, x1, y1 in [(0, 0, width, height)] + face_windows(height, width):
            for fx0, fy0, fx1, fy1 in self._faces_in(np.ascontiguousarray(image[y0:y1, x0:x1])):
                box = (fx0 + x0, fy0 + y0, fx1 + x0, fy1 + y0)
                if all(box_iou(box, other) < FACE_DUPLICATE_IOU for other in boxes):
                    boxes.append(box)
        return boxes

    def _faces_in(self, image: np.ndarray) -> list[Box]:
        height, width = image.shape[:2]
        result = self._faces.process(image)
        boxes = []
        for detection in result.detections or ():
            rel = detection.location_data.relative_bounding_box
            box = clip_box(rel.xmin * width, rel.ymin * height, (rel.xmin + rel.width) * width,
                           (rel.ymin + rel.height) * height, height, width)
            if box[2] > box[0] and box[3] > box[1]:
                boxes.append(box)
        return boxes

    def _hog_boxes(self, image: np.ndarray) -> list[Box]:
        if self._hog is None:
            return []
        import cv2

        height, width = image.shape[:2]
        scale = min(1.0, HOG_LONG_SIDE / max(height, width))
        small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA) if scale < 1.0 else image
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        if min(grey.shape) < 128:
            return []
        rects, weights = self._hog.detectMultiScale(grey, winStride=(8, 8), padding=(8, 8), scale=1.05)
        return [clip_box(x / scale, y / scale, (x + w) / scale, (y + h) / scale, height, width)
                for (x, y, w, h), weight in zip(rects, np.ravel(weights)) if weight >= HOG_MIN_WEIGHT]

    def _explained(self, candidate: Candidate, people: list[FoundPerson], taken: np.ndarray) -> bool:
        """Whether a candidate region is a person already found."""
        height, width = taken.shape
        if candidate.kind == "face":
            near = expand_box(candidate.box, 1.5, height, width)
            if any(self._head_in(p, near) for p in people):
                return True
            return fraction_taken(candidate.box, taken) > 0.5
        return fraction_taken(candidate.box, taken) > 0.3  # a body box is half background

    def _belongs_to(self, person: FoundPerson, candidate: Candidate) -> bool:
        """A face's crop must give the person with that face, not a neighbour reaching into it."""
        if candidate.kind != "face":
            return True
        height, width = person.mask.shape
        return self._head_in(person, expand_box(candidate.box, 1.5, height, width))

    def _known(self, person: FoundPerson, people: list[FoundPerson]) -> bool:
        """Whether `person` is one of `people` found again (e.g. from what painting left of them):
        their common keypoints lie within a fifth of the person's size of each other."""
        found = person.scores >= self.min_confidence
        for other in people:
            both = found & (other.scores >= self.min_confidence)
            if not both.any():
                continue
            size = max(1.0, float(np.ptp(person.xy[found], axis=0).max()),
                       float(np.ptp(other.xy[other.scores >= self.min_confidence], axis=0).max()))
            if np.median(np.linalg.norm(person.xy[both] - other.xy[both], axis=1)) < 0.2 * size:
                return True
        return False

    def _head_in(self, person: FoundPerson, box: Box) -> bool:
        head = list(HEAD_KEYPOINTS)
        found = person.scores[head] >= self.min_confidence
        return bool(np.any(points_in_box(person.xy[head], box) & found))

    def _estimate(self, image: np.ndarray, region: Box, hidden: np.ndarray, taken: np.ndarray) -> FoundPerson | None:
        """Pose on one region with the `hidden` pixels painted grey; None if it finds nobody new
        (nobody, or someone standing mostly on the `taken` pixels of the people already found)."""
        x0, y0, x1, y1 = region
        if x1 - x0 < 16 or y1 - y0 < 16:
            return None
        crop = image[y0:y1, x0:x1].copy()
        crop[hidden[y0:y1, x0:x1]] = PAINT_GREY
        result = self._pose.process(np.ascontiguousarray(crop))
        if result.pose_landmarks is None:
            return None
        xy, scores = openpose18_from_mediapipe33(landmarks_array(result.pose_landmarks), region)
        found = scores >= self.min_confidence
        if not found.any():
            return None
        # A "person" standing mostly on painted pixels is the remains of someone already found.
        on_taken = taken[np.clip(xy[found, 1].astype(int), 0, taken.shape[0] - 1),
                         np.clip(xy[found, 0].astype(int), 0, taken.shape[1] - 1)]
        if on_taken.mean() > 0.5:
            return None
        mask = np.zeros_like(taken)
        if result.segmentation_mask is not None:
            mask[y0:y1, x0:x1] = result.segmentation_mask > 0.5
        # The keypoints themselves are always taken, so the same person can never be found twice,
        # even where the segmentation missed them.
        mask |= keypoint_patches(xy[found], taken.shape)
        return FoundPerson(xy=xy, scores=scores, mask=mask)


def _checked_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BadImage(f"the pose estimator expects an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
    if image.shape[0] < 16 or image.shape[1] < 16:
        raise BadImage(f"the image is too small for pose estimation ({image.shape[1]}x{image.shape[0]})")
    return np.ascontiguousarray(image)
