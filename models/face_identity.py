"""Face identity: how much a restored face is still the same person. The cosine similarity of two ArcFace
embeddings, computed with an insightface model pack the user already has, on onnxruntime; the code is ours.

Packs (models/files.py names the files and their folders; the first complete pack is used):
- antelopev2: scrfd_10g_bnkps.onnx (detector) + glintr100.onnx (ArcFace R100, Glint360K);
- buffalo_l: det_10g.onnx (the same detector file) + w600k_r50.onnx (ArcFace R50, WebFace600K);
in ComfyUI/models/insightface/models/<pack>/, where IP-Adapter FaceID, InstantID and PuLID users keep them.

What the networks expect (insightface's python-package: model_zoo/scrfd.py, arcface_onnx.py,
utils/face_align.py, app/face_analysis.py):
- Detector (SCRFD-10G with keypoints): one input, (1, 3, H, W), the image in RGB as (x - 127.5) / 128.
  FaceAnalysis runs it at 640 x 640 (unless the file fixes its size): the image resized to fit (aspect kept,
  cv2.resize's bilinear) at the top-left, black elsewhere. Nine outputs, in this order: the scores at strides
  8, 16, 32, shape (N, 1) (or (1, N, 1) in batched exports), then the box distances (N, 4), then the keypoint
  offsets (N, 10). N = (H / s) * (W / s) * 2: the grid row-major, two anchors on each grid point, one after
  the other. A box is its anchor's centre minus (left, top) and plus (right, bottom) times the stride, the
  five keypoints (left eye, right eye, nose, left and right mouth corner) the centre plus offsets times the
  stride. Faces: score >= 0.5, then greedy NMS at IoU 0.4.
- Recognition: (B, 3, 112, 112), RGB, (x - 127.5) / 127.5 (both packs' networks are PyTorch exports; only
  MXNet conversions normalise inside the graph), one output (B, 512). The face is warped onto the ArcFace
  template's five points by the least-squares similarity transform of its keypoints (bilinear, black border).

identity(result, reference): the reference's largest face, the result's face at the same place (the best
box overlap, in coordinates relative to each image's size), the cosine of their embeddings, in -1..1.
A face that is not found makes the value missing, with the reason: never a 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import WrongModelFile
from .files import Alternatives, resolve_model_files
from .onnx_runtime import nms, onnx_providers, open_session

PACKS = {"antelopev2": (("scrfd_10g_bnkps.onnx", "insightface_antelopev2"), ("glintr100.onnx", "insightface_antelopev2")),
         "buffalo_l": (("det_10g.onnx", "insightface_buffalo_l"), ("w600k_r50.onnx", "insightface_buffalo_l"))}
# Either pack's detector with either pack's recognition network (the detectors are one file).
FACE_FILES = (Alternatives(tuple(pack[0] for pack in PACKS.values())),
              Alternatives(tuple(pack[1] for pack in PACKS.values())))
USER = ("The identity metric", "Without it the identity metric is reported missing.")

DETECTOR_SIZE = (640, 640)  # (w, h): FaceAnalysis's det_size as IP-Adapter FaceID and InstantID prepare it
DETECTOR_STRIDES = (8, 16, 32)
ANCHORS_PER_POINT = 2
DETECTOR_MEAN, DETECTOR_STD = 127.5, 128.0
FACE_SCORE, NMS_IOU = 0.5, 0.4
ARCFACE_SIZE = 112
ARCFACE_MEAN, ARCFACE_STD = 127.5, 127.5
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)
SAME_PLACE_IOU = 0.3  # a result face overlapping the reference face less than this is another face

NO_FACE_IN_REFERENCE = "no face found in the reference"
NO_FACE_IN_RESULT = "no face found in the result"
NO_FACE_AT_PLACE = "no face in the result where the reference has one"
# Facts of the images, not of the setup: a rerun gives the same (evaluation/scoring.py keeps them).
IMAGE_REASONS = frozenset({NO_FACE_IN_REFERENCE, NO_FACE_IN_RESULT, NO_FACE_AT_PLACE})


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # (4,) x1, y1, x2, y2 in image pixels
    keypoints: np.ndarray  # (5, 2) x, y in image pixels
    score: float

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


@dataclass(frozen=True)
class Identity:
    """A similarity in -1..1, or None with the reason it is missing."""

    similarity: float | None
    missing: str = ""


def face_model_paths(models_dir: Path) -> dict[str, str]:
    """{"detector": path, "recognition": path} from the models folder's insightface packs, or MissingModelFiles
    naming each file and where to put it (nothing is downloaded: models/files.py says why)."""
    paths = resolve_model_files(FACE_FILES, models_dir, download_missing=False,
                                hint="without them the identity metric is reported missing; ")
    return {"detector": paths[FACE_FILES[0].name], "recognition": paths[FACE_FILES[1].name]}


# ---------------------------------------------------------------- detection (SCRFD)

def detector_input(image: np.ndarray, size: tuple[int, int] = DETECTOR_SIZE) -> tuple[np.ndarray, float]:
    """(H, W, 3) uint8 RGB -> the (1, 3, h, w) float32 input (resized to fit, top-left, black elsewhere) and
    the scale from image to input pixels."""
    import cv2

    width, height = size
    h, w = image.shape[:2]
    if h / w > height / width:
        new_h, new_w = height, int(height / (h / w))
    else:
        new_h, new_w = int(width * (h / w)), width
    padded = np.zeros((height, width, 3), np.uint8)
    padded[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))
    blob = (padded.astype(np.float32) - DETECTOR_MEAN) / DETECTOR_STD
    return np.ascontiguousarray(blob.transpose(2, 0, 1)[None]), new_h / h


def anchor_centres(height: int, width: int, stride: int) -> np.ndarray:
    """(h/s * w/s * 2, 2) x, y of every anchor in input pixels: the grid row-major, each point twice."""
    ys, xs = np.mgrid[: height // stride, : width // stride]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, ANCHORS_PER_POINT, axis=0)


def decode_scrfd(outputs: list[np.ndarray], input_size: tuple[int, int], scale: float,
                 threshold: float = FACE_SCORE) -> list[Face]:
    """The detector's nine outputs for one (w, h) input -> the faces in image pixels (input / `scale`),
    after the score threshold and NMS, best first."""
    if len(outputs) != 3 * len(DETECTOR_STRIDES):
        raise WrongModelFile(f"DiffBody: the face detector gave {len(outputs)} outputs; SCRFD with keypoints "
                             f"(scrfd_10g_bnkps.onnx, det_10g.onnx) gives {3 * len(DETECTOR_STRIDES)}")
    width, height = input_size
    levels = len(DETECTOR_STRIDES)
    scores, boxes, keypoints = [], [], []
    for level, stride in enumerate(DETECTOR_STRIDES):
        score, distance, offset = (outputs[level + k * levels].reshape(-1, n) for k, n in enumerate((1, 4, 10)))
        centres = anchor_centres(height, width, stride)
        if len(score) != len(centres):
            raise WrongModelFile(f"DiffBody: the face detector gave {len(score)} anchors at stride {stride}; "
                                 f"SCRFD at {width}x{height} has {len(centres)}")
        chosen = score[:, 0] >= threshold
        centres, distance, offset = centres[chosen], distance[chosen] * stride, offset[chosen] * stride
        scores.append(score[chosen, 0])
        boxes.append(np.concatenate([centres - distance[:, :2], centres + distance[:, 2:]], axis=1))
        keypoints.append(centres[:, None] + offset.reshape(-1, 5, 2))
    score, box, keypoint = np.concatenate(scores), np.concatenate(boxes) / scale, np.concatenate(keypoints) / scale
    return [Face(box[i], keypoint[i], float(score[i])) for i in nms(box, score, NMS_IOU)]


# ---------------------------------------------------------------- alignment and embedding (ArcFace)

def alignment_matrix(keypoints: np.ndarray) -> np.ndarray:
    """(5, 2) keypoints -> the 2x3 similarity transform onto the 112x112 ArcFace template, least squares over
    all five points (skimage's SimilarityTransform.estimate, as insightface: an infinite RANSAC threshold
    keeps every point, and OpenCV's refinement then solves the least-squares problem)."""
    import cv2

    matrix, _ = cv2.estimateAffinePartial2D(keypoints.astype(np.float32), ARCFACE_TEMPLATE,
                                            ransacReprojThreshold=np.inf)
    if matrix is None:
        raise ValueError(f"no similarity transform fits the keypoints {keypoints.tolist()}")
    return matrix


def aligned_face(image: np.ndarray, face: Face) -> np.ndarray:
    """(112, 112, 3) uint8 RGB: the face warped onto the ArcFace template."""
    import cv2

    return cv2.warpAffine(image, alignment_matrix(face.keypoints), (ARCFACE_SIZE, ARCFACE_SIZE), borderValue=0.0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def same_place(reference: Face, reference_size: tuple[int, int], faces: list[Face],
               size: tuple[int, int]) -> Face | None:
    """The face among `faces` (in an image of (h, w) `size`) that overlaps `reference` (in one of
    `reference_size`) most, in coordinates relative to each image; None below SAME_PLACE_IOU."""
    def relative(face: Face, hw: tuple[int, int]) -> np.ndarray:
        return face.box / np.array([hw[1], hw[0], hw[1], hw[0]], np.float64)

    target = relative(reference, reference_size)
    best, best_iou = None, SAME_PLACE_IOU
    for face in faces:
        box = relative(face, size)
        inter = (max(0.0, min(box[2], target[2]) - max(box[0], target[0]))
                 * max(0.0, min(box[3], target[3]) - max(box[1], target[1])))
        union = (box[2] - box[0]) * (box[3] - box[1]) + (target[2] - target[0]) * (target[3] - target[1]) - inter
        iou = inter / union if union > 0 else 0.0
        if iou >= best_iou:
            best, best_iou = face, iou
    return best


class FaceIdentity:
    """`metric(result, reference) -> Identity` on (H, W, 3) uint8 RGB images, with a detector and a
    recognition network of insightface's packs (face_model_paths)."""

    def __init__(self, detector_path: str, recognition_path: str, device: str | None = None):
        providers = onnx_providers(device, USER)
        self.detector = open_session(detector_path, providers, USER)
        self.recognition = open_session(recognition_path, providers, USER)
        self.detector_size = self._check_detector(detector_path)
        self._check_recognition(recognition_path)

    def _check_detector(self, path: str) -> tuple[int, int]:
        shape = self.detector.get_inputs()[0].shape
        if len(self.detector.get_outputs()) != 3 * len(DETECTOR_STRIDES) or len(shape) != 4 or shape[1] != 3:
            raise WrongModelFile(f"DiffBody: '{path}' is not an SCRFD face detector with keypoints (input {shape}, "
                                 f"{len(self.detector.get_outputs())} outputs; expected (1, 3, H, W) and 9)")
        fixed = isinstance(shape[2], int) and isinstance(shape[3], int)
        return (shape[3], shape[2]) if fixed else DETECTOR_SIZE

    def _check_recognition(self, path: str) -> None:
        shape = self.recognition.get_inputs()[0].shape
        outputs = self.recognition.get_outputs()
        if list(shape[1:]) != [3, ARCFACE_SIZE, ARCFACE_SIZE] or len(outputs) != 1 or outputs[0].shape[-1] != 512:
            raise WrongModelFile(f"DiffBody: '{path}' is not an ArcFace recognition network (input {shape}, "
                                 f"outputs {[o.shape for o in outputs]}; expected (B, 3, 112, 112) -> (B, 512))")

    def faces(self, image: np.ndarray) -> list[Face]:
        """Every face in an (H, W, 3) uint8 RGB image, best score first."""
        blob, scale = detector_input(image, self.detector_size)
        outputs = self.detector.run(None, {self.detector.get_inputs()[0].name: blob})
        return decode_scrfd(outputs, self.detector_size, scale)

    def embedding(self, image: np.ndarray, face: Face) -> np.ndarray:
        """(512,) ArcFace embedding of one face (not normalised; the cosine does not need it)."""
        crop = (aligned_face(image, face).astype(np.float32) - ARCFACE_MEAN) / ARCFACE_STD
        blob = np.ascontiguousarray(crop.transpose(2, 0, 1)[None])
        return self.recognition.run(None, {self.recognition.get_inputs()[0].name: blob})[0][0]

    def __call__(self, result: np.ndarray, reference: np.ndarray) -> Identity:
        reference_faces = self.faces(reference)
        if not reference_faces:
            return Identity(None, NO_FACE_IN_REFERENCE)
        result_faces = self.faces(result)
        if not result_faces:
            return Identity(None, NO_FACE_IN_RESULT)
        largest = max(reference_faces, key=lambda face: face.area)
        match = same_place(largest, reference.shape[:2], result_faces, result.shape[:2])
        if match is None:
            return Identity(None, NO_FACE_AT_PLACE)
        return Identity(cosine(self.embedding(result, match), self.embedding(reference, largest)))
