"""models/face_identity.py and the evaluation's identity column: random-weight ONNX files with the real
insightface files' interfaces (testing/tiny/insightface.py) loaded through the production code; SCRFD
decoding against a detector whose outputs put faces at known places; alignment onto the ArcFace template
(checked against scikit-image's SimilarityTransform, which insightface uses); cosine 1 for identical images;
missing values with their reasons, never 0; the missing-file and missing-onnxruntime messages."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")  # a test requirement (requirements-dev.txt)
pytest.importorskip("onnx")

from comfyui_diffbody.evaluation.neural import neural_metrics  # noqa: E402
from comfyui_diffbody.evaluation.scoring import Scorer  # noqa: E402
from comfyui_diffbody.models import face_identity as fi  # noqa: E402
from comfyui_diffbody.models.errors import MissingDependency, MissingModelFiles, WrongModelFile  # noqa: E402
from comfyui_diffbody.testing.tiny.insightface import (  # noqa: E402
    DETECTOR_OUTPUTS, default_face, write_tiny_face_detector, write_tiny_face_recognition)

SECOND_FACE = default_face(cx=520.0, cy=120.0, size=96.0)  # in 640 x 640 input pixels


def write_pack(models_dir: Path, pack: str = "buffalo_l", faces=(default_face(),), seed: int = 0) -> dict[str, Path]:
    """A pack's detector and recognition files, random weights, under models/insightface/models/<pack>/."""
    (detector, _), (recognition, _) = fi.PACKS[pack]
    folder = models_dir / "insightface" / "models" / pack
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_face_detector(str(folder / detector), faces=faces, seed=seed)
    write_tiny_face_recognition(str(folder / recognition), seed=seed)
    return {"detector": folder / detector, "recognition": folder / recognition}


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> dict[str, Path]:
    return write_pack(tmp_path_factory.mktemp("models"), faces=(default_face(), SECOND_FACE))


@pytest.fixture(scope="module")
def identity(pack) -> fi.FaceIdentity:
    return fi.FaceIdentity(str(pack["detector"]), str(pack["recognition"]), device="cpu")


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_the_tiny_files_have_the_real_files_interfaces(identity):
    detector_input = identity.detector.get_inputs()[0]
    assert detector_input.name == "input.1" and detector_input.shape[:2] == [1, 3]
    assert all(isinstance(dim, str) for dim in detector_input.shape[2:])  # any size; FaceAnalysis runs 640 x 640
    outputs = identity.detector.get_outputs()
    assert [o.name for o in outputs] == list(DETECTOR_OUTPUTS)
    anchors = [(640 // s) ** 2 * 2 for s in (8, 16, 32)]
    assert [o.shape for o in outputs] == [[n, k] for k in (1, 4, 10) for n in anchors]
    recognition_input = identity.recognition.get_inputs()[0]
    assert recognition_input.name == "input.1" and recognition_input.shape[1:] == [3, 112, 112]
    assert [(o.name, o.shape[-1]) for o in identity.recognition.get_outputs()] == [("683", 512)]
    assert identity.detector_size == (640, 640)


@pytest.mark.parametrize("height, width", [(320, 320), (240, 320), (400, 200)])
def test_decoded_faces_land_where_the_detector_put_them(identity, height, width):
    # the image is resized to fit 640 x 640 at the top-left: input pixels / scale are image pixels
    scale = min(640 / height, 640 / width)
    faces = identity.faces(photo(height, width))
    assert len(faces) == 2
    by_size = sorted(faces, key=lambda face: -face.area)
    for face, placed in zip(by_size, (default_face(), SECOND_FACE)):
        np.testing.assert_allclose(face.box, np.array(placed["box"]) / scale, atol=0.05)
        np.testing.assert_allclose(face.keypoints, np.array(placed["keypoints"]) / scale, atol=0.05)
        assert face.score > 0.99


def test_decoding_reads_batched_outputs_and_drops_weak_scores():
    # hand-built outputs of a 64 x 64 input: one face on the second anchor of grid point (x 1, y 0) at stride 16
    counts = [(64 // s) ** 2 * 2 for s in (8, 16, 32)]
    scores = [np.zeros((1, n, 1), np.float32) for n in counts]
    distances = [np.zeros((1, n, 4), np.float32) for n in counts]
    offsets = [np.zeros((1, n, 10), np.float32) for n in counts]
    anchor = (0 * 4 + 1) * 2 + 1
    scores[1][0, anchor] = 0.9
    distances[1][0, anchor] = [0.5, 0.25, 1.0, 2.0]  # in strides: left, top, right, bottom
    offsets[1][0, anchor] = np.arange(10) / 10
    scores[2][0, 0] = 0.49  # below FaceAnalysis's 0.5
    [face] = fi.decode_scrfd([*scores, *distances, *offsets], (64, 64), scale=0.5)
    centre = np.array([16.0, 0.0])
    np.testing.assert_allclose(face.box, np.r_[centre - [8, 4], centre + [16, 32]] / 0.5)
    np.testing.assert_allclose(face.keypoints, (centre + 16 * np.arange(10).reshape(5, 2) / 10) / 0.5)
    with pytest.raises(WrongModelFile, match="gives 9"):
        fi.decode_scrfd([*scores, *distances], (64, 64), scale=1.0)
    with pytest.raises(WrongModelFile, match="anchors at stride 8"):
        fi.decode_scrfd([*scores, *distances, *offsets], (96, 64), scale=1.0)


def similarity(scale: float, angle: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


def test_alignment_maps_the_keypoints_onto_the_arcface_template():
    to_image = similarity(2.5, math.radians(20), (300.0, 140.0))  # a face 2.5x the template's size, tilted
    keypoints = fi.ARCFACE_TEMPLATE @ to_image[:, :2].T + to_image[:, 2]
    matrix = fi.alignment_matrix(keypoints)
    np.testing.assert_allclose(keypoints @ matrix[:, :2].T + matrix[:, 2], fi.ARCFACE_TEMPLATE, atol=1e-3)

    # the warp itself: bright dots at the keypoints land on the template's points in the 112 x 112 crop
    image = np.zeros((480, 640, 3), np.uint8)
    for x, y in keypoints.round().astype(int):
        image[y - 2:y + 3, x - 2:x + 3] = 255
    crop = fi.aligned_face(image, fi.Face(np.zeros(4), keypoints, 1.0))
    assert crop.shape == (112, 112, 3)
    for x, y in fi.ARCFACE_TEMPLATE.round().astype(int):
        assert crop[y, x].min() > 200, (x, y)


def test_alignment_is_insightfaces_least_squares_similarity():
    skimage_transform = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(0)
    for _ in range(5):
        to_image = similarity(rng.uniform(0.5, 4), rng.uniform(-0.6, 0.6), tuple(rng.uniform(50, 400, 2)))
        keypoints = fi.ARCFACE_TEMPLATE @ to_image[:, :2].T + to_image[:, 2] + rng.normal(0, 4, (5, 2))
        if hasattr(skimage_transform.SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
            reference = skimage_transform.SimilarityTransform.from_estimate(keypoints, fi.ARCFACE_TEMPLATE)
        else:
            reference = skimage_transform.SimilarityTransform()
            assert reference.estimate(keypoints, fi.ARCFACE_TEMPLATE)
        np.testing.assert_allclose(fi.alignment_matrix(keypoints), reference.params[:2], atol=2e-3)


def test_the_networks_get_their_inputs_as_insightface_prepares_them(identity):
    """insightface reads BGR images with cv2 and builds both inputs with cv2.dnn.blobFromImage(..., swapRB=True):
    RGB, (x - 127.5) / 128 for the detector, (x - 127.5) / 127.5 for the recognition network."""
    import cv2

    image = photo(240, 320, seed=3)
    blob, scale = fi.detector_input(image)
    letterboxed = np.zeros((640, 640, 3), np.uint8)
    letterboxed[:480, :640] = cv2.resize(image[..., ::-1], (640, 480))  # insightface's det_img, BGR
    expected = cv2.dnn.blobFromImage(letterboxed, 1.0 / 128, (640, 640), (127.5, 127.5, 127.5), swapRB=True)
    assert scale == 2.0 and blob.shape == expected.shape
    np.testing.assert_allclose(blob, expected, atol=1e-5)

    face = identity.faces(image)[0]
    aligned_bgr = cv2.warpAffine(image[..., ::-1], fi.alignment_matrix(face.keypoints), (112, 112), borderValue=0.0)
    arcface_blob = cv2.dnn.blobFromImages([aligned_bgr], 1.0 / 127.5, (112, 112), (127.5, 127.5, 127.5), swapRB=True)
    expected_embedding = identity.recognition.run(None, {"input.1": arcface_blob})[0][0]
    np.testing.assert_allclose(identity.embedding(image, face), expected_embedding, rtol=1e-4, atol=1e-5)


def test_identical_images_score_one_and_a_changed_face_less(identity):
    image = photo(240, 320, seed=1)
    assert identity(image, image.copy()) == fi.Identity(pytest.approx(1.0, abs=1e-6))
    changed = image.copy()
    changed[80:160, 120:200] = 255 - changed[80:160, 120:200]  # the large face's box (input / 2)
    score = identity(changed, image)
    assert score.missing == "" and -1.0 <= score.similarity < 0.999
    elsewhere = image.copy()
    elsewhere[36:84, 236:284] = 255 - elsewhere[36:84, 236:284]  # the small face's box: not the one compared
    assert identity(elsewhere, image).similarity == pytest.approx(1.0, abs=1e-6)


def test_the_reference_face_is_matched_at_its_place_in_the_result():
    big, small = (fi.Face(np.array(box, float), np.zeros((5, 2)), 0.9)
                  for box in ((100, 100, 200, 200), (300, 20, 340, 60)))
    # the largest reference face, found in a result of twice the size at the same relative place
    result_faces = [fi.Face(small.box * 2, small.keypoints, 0.99), fi.Face(big.box * 2 + 10, big.keypoints, 0.6)]
    assert fi.same_place(big, (400, 400), result_faces, (800, 800)) is result_faces[1]
    assert fi.same_place(big, (400, 400), result_faces[:1], (800, 800)) is None


def test_no_face_is_a_missing_value_with_its_reason(tmp_path, identity):
    empty = write_pack(tmp_path, faces=())
    blind = fi.FaceIdentity(str(empty["detector"]), str(empty["recognition"]), device="cpu")
    image = photo(240, 320)
    assert blind(image, image) == fi.Identity(None, fi.NO_FACE_IN_REFERENCE)

    class OnlyInReference(fi.FaceIdentity):  # the result's detector finds nothing, or only another face
        def faces(self, picture):
            return identity.faces(picture) if picture is image else self.result_faces

    one_sided = OnlyInReference(str(empty["detector"]), str(empty["recognition"]), device="cpu")
    one_sided.result_faces = []
    assert one_sided(image.copy(), image) == fi.Identity(None, fi.NO_FACE_IN_RESULT)
    one_sided.result_faces = [fi.Face(np.array([0.0, 0.0, 10.0, 10.0]), np.zeros((5, 2)), 0.9)]
    assert one_sided(image.copy(), image) == fi.Identity(None, fi.NO_FACE_AT_PLACE)


def test_missing_files_are_named_with_where_to_put_them(tmp_path):
    with pytest.raises(MissingModelFiles) as caught:
        fi.face_model_paths(tmp_path)
    message = str(caught.value)
    for name in ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "det_10g.onnx", "w600k_r50.onnx"):
        assert f"'{name}'" in message
    for pack in ("antelopev2", "buffalo_l"):
        assert str(tmp_path / "insightface" / "models" / pack) in message
    assert "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip" in message
    assert "does not download it" in message and "--download" not in message


def test_the_first_complete_pack_is_used_and_packs_may_mix(tmp_path):
    buffalo = write_pack(tmp_path, "buffalo_l")
    assert fi.face_model_paths(tmp_path) == {"detector": str(buffalo["detector"]),
                                             "recognition": str(buffalo["recognition"])}
    antelope = write_pack(tmp_path, "antelopev2")
    assert fi.face_model_paths(tmp_path) == {"detector": str(antelope["detector"]),
                                             "recognition": str(antelope["recognition"])}
    antelope["recognition"].unlink()  # antelopev2's detector with buffalo_l's recognition: the same detector file
    assert fi.face_model_paths(tmp_path)["recognition"] == str(buffalo["recognition"])


def test_a_file_of_another_kind_is_refused(pack):
    with pytest.raises(WrongModelFile, match="not an SCRFD face detector"):
        fi.FaceIdentity(str(pack["recognition"]), str(pack["recognition"]), device="cpu")
    with pytest.raises(WrongModelFile, match="not an ArcFace recognition network"):
        fi.FaceIdentity(str(pack["detector"]), str(pack["detector"]), device="cpu")


def test_without_onnxruntime_the_message_names_both_builds(pack, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if neither build were installed
    with pytest.raises(MissingDependency, match="The identity metric needs ONNX Runtime") as caught:
        fi.FaceIdentity(str(pack["detector"]), str(pack["recognition"]), device="cpu")
    assert "pip install onnxruntime-gpu" in str(caught.value) and "pip install onnxruntime`" in str(caught.value)


def test_the_evaluation_scores_identity_and_records_why_it_is_missing(tmp_path, capsys):
    metrics, unavailable = neural_metrics(tmp_path, download=False, device="cpu")
    assert "identity" not in metrics and unavailable["identity"].startswith("no face models")
    assert "det_10g.onnx" in capsys.readouterr().err

    write_pack(tmp_path)
    scorer = Scorer(*neural_metrics(tmp_path, download=False, device="cpu"))
    reference = torch.rand(1, 3, 240, 320, generator=torch.Generator().manual_seed(0))
    same, other = scorer.score(torch.cat([reference, torch.zeros_like(reference)]), reference.repeat(2, 1, 1, 1))
    assert same["identity"] == pytest.approx(1.0, abs=1e-6) and "identity" not in same["missing"]
    assert other["identity"] != 1.0  # the tiny detector finds its face in a black picture too, another embedding
    [no_reference] = scorer.score(reference, None)
    assert no_reference["identity"] == "" and "identity: no reference image" in no_reference["missing"]
    assert not scorer.needs_work(same, has_reference=True)

    # a value missing for a fact of the image is recorded and final; one missing for want of the files is redone
    write_pack(tmp_path / "blind", faces=())
    blind = Scorer(*neural_metrics(tmp_path / "blind", download=False, device="cpu"))
    [no_face] = blind.score(reference, reference)
    assert no_face["identity"] == "" and f"identity: {fi.NO_FACE_IN_REFERENCE}" in no_face["missing"]
    assert no_face["psnr"] != ""
    assert not blind.needs_work(no_face, has_reference=True) and not scorer.needs_work(no_face, has_reference=True)
    assert scorer.needs_work({**no_face, "missing": f"identity: {unavailable['identity']}"}, has_reference=True)
