"""Model files other packs already downloaded are found through a real ComfyUI server: DWPose's two ONNX files
only in comfyui_controlnet_aux's checkpoint folder run our pose node, the loaders list what exists first, and an
extra_model_paths.yaml entry for our folder still counts.

One server of its own (an empty models folder, a comfyui_controlnet_aux folder holding the tiny DWPose files,
an extra_model_paths.yaml), so nothing here can come from the shared tiny models folder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from comfy_harness import ComfyServer, execution_error, make_base_dir
from conftest import oldest_comfyui_or_skip, person_photo

pytestmark = pytest.mark.server
DET, POSE = "yolox_l.onnx", "dw-ll_ucoco_384.onnx"


@pytest.fixture(scope="module", params=["current", "oldest"])
def reuse_server(request, tmp_path_factory):
    """On the current ComfyUI and on the oldest the pack claims (their folder_paths differ)."""
    from comfyui_diffbody.testing.tiny.dwpose import write_tiny_dwpose
    from comfyui_diffbody.testing.tiny.openpose import write_tiny_openpose

    base = make_base_dir(tmp_path_factory.mktemp("comfy-reuse"), "ComfyUI-DiffBody-main")
    # comfyui_controlnet_aux's layout: ckpts/<Hugging Face repo id>/<file> (its custom_hf_download); the pack
    # itself is not installed, only its folder is there, as after a user removed it or before it loads.
    aux = base / "custom_nodes" / "comfyui_controlnet_aux" / "ckpts" / "yzd-v" / "DWPose"
    aux.mkdir(parents=True)
    write_tiny_dwpose(str(aux / DET), str(aux / POSE))
    (aux / "dw-ll_ucoco_384_bs5.torchscript.pt").write_bytes(b"not ours")  # a name we do not know: not listed
    extra = base / "elsewhere" / "pose"
    extra.mkdir(parents=True)
    write_tiny_openpose(str(extra / "my_openpose.pth"))
    (extra / "notes.txt").write_text("not a model")  # the yaml-made folder name still filters by extension
    # Depth and normal folders where other packs keep them (empty: only their listing is checked here)
    for folder in ("depthanything/Depth-Anything-V2-Small-hf", "depthanything/not-a-known-model",
                   "diffusers/marigold-normals-v1-1", "diffusers/stable-diffusion-xl-base-1.0"):
        (base / "models" / folder).mkdir(parents=True)
    config = base / "extra_model_paths.yaml"
    config.write_text(f"mine:\n  base_path: {base / 'elsewhere'}\n  diffbody_pose: pose\n")
    Image.fromarray(person_photo()).resize((256, 256)).save(base / "input" / "person.png")
    comfy_dir, python_path = oldest_comfyui_or_skip() if request.param == "oldest" else (None, "")
    server = ComfyServer(base, extra_args=("--extra-model-paths-config", str(config)), comfy_dir=comfy_dir,
                         python_path=python_path).start()
    yield server
    server.stop()


def pose_graph(image: str) -> dict:
    return {
        "load": {"class_type": "LoadImage", "inputs": {"image": image}},
        "pose": {"class_type": "DiffBodyPoseEstimator",
                 "inputs": {"image": ["load", 0], "backend": "dwpose", "draw_hands": False, "draw_face": False,
                            "dwpose_detector": DET, "dwpose_estimator": POSE,
                            "openpose_model": "body_pose_model.pth", "auto_download": False}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["pose", 0], "filename_prefix": "reuse_pose"}},
        "show": {"class_type": "PreviewAny", "inputs": {"source": ["pose", 1]}},
    }


def test_dwpose_files_only_in_controlnet_aux_run_the_pose_node(reuse_server):
    entry = reuse_server.run(pose_graph("person.png"), timeout=300)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    [skeleton] = reuse_server.output_files({"outputs": {"s": entry["outputs"]["save"]}})
    assert np.asarray(Image.open(skeleton)).max() > 0, "the tiny detector reports people: skeletons are drawn"
    assert json.loads(entry["outputs"]["show"]["text"][0])[0]["people"]


def test_the_pose_dropdowns_list_what_exists_first(reuse_server):
    inputs = reuse_server.object_info()["DiffBodyPoseEstimator"]["input"]["required"]
    listed = inputs["dwpose_detector"][0]
    assert listed == inputs["openpose_model"][0]  # one folder behind the three dropdowns
    # present: the two in controlnet_aux's folder and the one from extra_model_paths.yaml; then the absent
    # known file; the unknown file in the other pack's folder and the .txt are not offered
    assert listed == [POSE, "my_openpose.pth", DET, "body_pose_model.pth"]


def test_depth_and_normal_folders_of_other_packs_are_listed_by_their_known_names(reuse_server):
    from comfyui_diffbody.models.depth_estimator import DEFAULT_DEPTH_MODEL

    inputs = reuse_server.object_info()["DiffBodyDepthNormalEstimator"]["input"]["required"]
    depth, normals = inputs["depth_model"][0], inputs["normal_source"][0]
    assert depth[0] == "Depth-Anything-V2-Small-hf" and DEFAULT_DEPTH_MODEL in depth  # present first
    assert normals[:2] == ["from depth", "marigold-normals-v1-1"]
    for listed in (depth, normals):
        assert "not-a-known-model" not in listed and "stable-diffusion-xl-base-1.0" not in listed
