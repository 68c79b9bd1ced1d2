"""Real-weights check of the MediaPipe pose backend; runs INSIDE the mediapipe venv, not under pytest.

    "$(scripts/mediapipe_venv.sh)" tests/mediapipe_pose_check.py [--repo DIR] [--save DIR]
    "$(scripts/mediapipe_venv.sh)" tests/mediapipe_pose_check.py --frame IMAGE.png   # that image's frame only

mediapipe 0.10.21 pins numpy 1.26, so it lives in its own venv (scripts/mediapipe_venv.sh) and
tests/test_pose_mediapipe.py runs this script there in a subprocess. It loads the checkout given by
--repo (default: this file's repository) as the package `comfyui_diffbody`, so the cached venv
needs no install of the pack. The checks use what ships with the venv's packages: scikit-image's
`astronaut` photo, and OpenCV's Haar face cascade as an independent witness of where the face is.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path


def load_pack(repo: Path):
    """Import the checkout at `repo` as `comfyui_diffbody`, whatever its folder is called."""
    spec = importlib.util.spec_from_file_location("comfyui_diffbody", repo / "__init__.py",
                                                  submodule_search_locations=[str(repo)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_diffbody"] = module
    spec.loader.exec_module(module)
    return module


def haar_faces(image) -> list[list[int]]:
    """Frontal faces found by OpenCV's bundled Haar cascade, as [x0, y0, x1, y1]."""
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    boxes = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(30, 30))
    return [[int(x), int(y), int(x + w), int(y + h)] for x, y, w, h in boxes]


def noses(frame) -> list[list[float] | None]:
    """The nose [x, y] of each person (None where it was not found)."""
    out = []
    for person in frame["people"]:
        x, y, c = person["pose_keypoints_2d"][0:3]
        out.append([x, y] if c > 0 else None)
    return out


def inside(point, box) -> bool:
    return point is not None and box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


def describe(estimator, draw_pose, image, save_dir: Path | None, name: str) -> dict:
    start = time.perf_counter()
    frame = estimator(image)
    seconds = time.perf_counter() - start
    height, width = image.shape[:2]
    skeleton = draw_pose(frame, height, width)
    faces = haar_faces(image)
    nose_points = noses(frame)
    # Each face box should hold exactly one person's nose: one skeleton per person, no duplicates.
    noses_per_face = [sum(inside(n, box) for n in nose_points) for box in faces]
    drawn = skeleton.any(axis=2)
    if save_dir is not None:
        from PIL import Image

        save_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(skeleton).save(save_dir / f"{name}_skeleton.png")
        Image.fromarray((image * 0.5 + skeleton * 0.5).astype("uint8")).save(save_dir / f"{name}_overlay.png")
    return {
        "input_shape": list(image.shape),
        "skeleton_shape": list(skeleton.shape),
        "skeleton_dtype": str(skeleton.dtype),
        "people": len(frame["people"]),
        "noses": nose_points,
        "face_boxes": faces,
        "noses_per_face": noses_per_face,
        "nose_in_face": bool(faces) and all(count == 1 for count in noses_per_face),
        # Skeleton pixels in the left and right half of the canvas (both non-zero for two people).
        "drawn_pixels_left_right": [int(drawn[:, : width // 2].sum()), int(drawn[:, width // 2:].sum())],
        "seconds": round(seconds, 3),
    }


def frame_of(repo: Path, image_file: Path) -> dict:
    """The MediaPipe backend's frame for one image file, read as RGB."""
    import cv2

    load_pack(repo)
    from comfyui_diffbody.pipelines.pose.mediapipe_backend import MediaPipePoseEstimator

    image = cv2.cvtColor(cv2.imread(str(image_file), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    with MediaPipePoseEstimator() as estimator:
        return estimator(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--save", type=Path, default=None, help="also write skeleton/overlay PNGs here")
    parser.add_argument("--frame", type=Path, default=None,
                        help="instead: print the POSE_KEYPOINT frame of this RGB image file (tests/test_group.py)")
    args = parser.parse_args()
    if args.frame is not None:
        print(json.dumps(frame_of(args.repo.resolve(), args.frame)))
        return

    import numpy as np
    from skimage import data

    load_pack(args.repo.resolve())
    from comfyui_diffbody.pipelines.pose.draw import draw_pose
    from comfyui_diffbody.pipelines.pose.mediapipe_backend import MediaPipePoseEstimator

    import mediapipe

    photo = data.astronaut()
    two_people = np.concatenate([photo, photo], axis=1)  # the same person twice, side by side
    start = time.perf_counter()
    with MediaPipePoseEstimator() as estimator:
        load_seconds = time.perf_counter() - start
        result = {
            "mediapipe": mediapipe.__version__,
            "numpy": np.__version__,
            "load_seconds": round(load_seconds, 3),
            "one_person": describe(estimator, draw_pose, photo, args.save, "one_person"),
            "two_people": describe(estimator, draw_pose, two_people, args.save, "two_people"),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
