"""Depth and normal estimators: loading tiny folders in the public layouts, output shapes and ranges,
the normal colour convention, and the messages for missing or wrong folders."""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest
import torch

from comfyui_diffbody.models.depth_estimator import DepthEstimator, check_depth_folder, normalise_per_image
from comfyui_diffbody.models.errors import MissingModelFile, WrongModelFile
from comfyui_diffbody.models.files import KNOWN_FILES
from comfyui_diffbody.models.normal_estimator import check_normals_folder
from comfyui_diffbody.pipelines.depth_normal import (
    DepthNormalEstimator,
    load_depth_normal_estimator,
    marigold_to_colour,
    normals_from_depth,
)
from comfyui_diffbody.pipelines.image import BadImage
from comfyui_diffbody.testing.tiny.priors import write_tiny_depth_anything, write_tiny_marigold_normals


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    return {"depth": write_tiny_depth_anything(str(root / "tiny-depth")),
            "normals": write_tiny_marigold_normals(str(root / "tiny-normals"))}


def _images(batch=2, height=40, width=24, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_tiny_depth_folder_has_the_transformers_layout(tiny_dirs):
    names = set(os.listdir(tiny_dirs["depth"]))
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names
    config = json.load(open(os.path.join(tiny_dirs["depth"], "config.json")))
    assert config["model_type"] == "depth_anything" and config["backbone_config"]["model_type"] == "dinov2"


@pytest.mark.parametrize("normals", [False, True], ids=["from-depth", "marigold"])
def test_estimate_shapes_ranges_and_progress(tiny_dirs, normals):
    estimator = load_depth_normal_estimator(tiny_dirs["depth"], tiny_dirs["normals"] if normals else None)
    calls = []
    depth, normal = estimator.estimate(_images(batch=2, height=40, width=24), progress=lambda *a: calls.append(a))
    assert calls == [(1, 2), (2, 2)]
    for result in (depth, normal):
        assert result.shape == (2, 3, 40, 24) and result.dtype == torch.float32 and result.device.type == "cpu"
        assert result.min() >= 0 and result.max() <= 1
    assert torch.equal(depth[:, 0], depth[:, 1]) and torch.equal(depth[:, 0], depth[:, 2])  # grey
    for item in depth:  # normalised per image to the full range
        assert item.min() == 0 and item.max() == 1
    vectors = normal * 2 - 1  # colours hold unit vectors
    assert torch.allclose(vectors.norm(dim=1), torch.ones(2, 40, 24), atol=0.02)


def test_bf16_estimators_run_on_the_cpu_and_agree_with_float32(tiny_dirs):
    """ComfyUI started with --bf16-unet makes the node load both estimators in bf16 (glue.preferred_dtype); the
    real-size workflow then died in Marigold's antialiased resize, which has no bf16 CPU kernel."""
    images = _images(batch=1, height=40, width=24)
    results = {dtype: load_depth_normal_estimator(tiny_dirs["depth"], tiny_dirs["normals"], dtype=dtype).estimate(images)
               for dtype in (torch.float32, torch.bfloat16)}
    for full, half in zip(results[torch.float32], results[torch.bfloat16]):
        assert half.shape == full.shape == (1, 3, 40, 24) and half.dtype == torch.float32
        assert (half - full).abs().mean() < 0.1  # the same picture, up to bf16 rounding


def test_odd_sizes_keep_their_size(tiny_dirs):
    estimator = load_depth_normal_estimator(tiny_dirs["depth"], tiny_dirs["normals"])
    for height, width in ((9, 17), (1, 30), (63, 5), (8, 2048), (2048, 8)):  # Marigold refused 1:256 strips
        depth, normal = estimator.estimate(_images(batch=1, height=height, width=width))
        assert depth.shape == normal.shape == (1, 3, height, width)


def test_results_do_not_depend_on_the_batch(tiny_dirs):
    estimator = load_depth_normal_estimator(tiny_dirs["depth"], tiny_dirs["normals"], seed=3)
    images = _images(batch=2)
    depth, normal = estimator.estimate(images)
    single_depth, single_normal = estimator.estimate(images[:1])
    assert torch.allclose(depth[:1], single_depth, atol=1e-5)
    assert torch.allclose(normal[:1], single_normal, atol=1e-5)


def test_marigold_seed_and_steps_change_the_normals(tiny_dirs):
    images = _images(batch=1)
    base = load_depth_normal_estimator(tiny_dirs["depth"], tiny_dirs["normals"], seed=0).estimate(images)[1]
    again = load_depth_normal_estimator(tiny_dirs["depth"], tiny_dirs["normals"], seed=0).estimate(images)[1]
    other_seed = load_depth_normal_estimator(tiny_dirs["depth"], tiny_dirs["normals"], seed=1).estimate(images)[1]
    assert torch.equal(base, again)
    assert not torch.allclose(base, other_seed)


def test_to_moves_both_estimators_and_returns_itself(tiny_dirs):
    estimator = load_depth_normal_estimator(tiny_dirs["depth"], tiny_dirs["normals"])
    assert estimator.to("cpu") is estimator
    assert estimator.size_bytes() > 0


def test_bad_image_batches_are_refused(tiny_dirs):
    estimator = load_depth_normal_estimator(tiny_dirs["depth"])
    with pytest.raises(BadImage):
        estimator.estimate(torch.rand(1, 4, 8, 8))
    with pytest.raises(BadImage):
        estimator.estimate(torch.rand(0, 3, 8, 8))


class _FixedDepth:
    """A depth estimator stand-in returning a given map, to test what is built on the depth."""

    device = torch.device("cpu")

    def __init__(self, depth):
        self.depth = depth

    def predict(self, images):
        return self.depth


def test_from_depth_normals_follow_the_convention_on_ramps():
    height, width = 32, 48
    rows = torch.linspace(0, 1, height).view(1, 1, height, 1).expand(1, 1, height, width)
    cols = torch.linspace(0, 1, width).view(1, 1, 1, width).expand(1, 1, height, width)
    # A floor: the bottom of the image is nearest (bright), so the surface faces UP: green > 0.5, red = 0.5.
    floor = normals_from_depth(rows)[0]
    assert (floor[1] > 0.6).all() and torch.allclose(floor[0], torch.full_like(floor[0], 0.5), atol=1e-6)
    # Nearer to the right: a surface turned to the LEFT: red > 0.5 (red = left in the convention).
    wall = normals_from_depth(cols)[0]
    assert (wall[0] > 0.6).all() and torch.allclose(wall[1], torch.full_like(wall[1], 0.5), atol=1e-6)
    # Flat depth faces the camera: (0.5, 0.5, 1.0).
    flat = normals_from_depth(torch.full((1, 1, 8, 8), 0.3))[0]
    assert torch.allclose(flat, torch.tensor([0.5, 0.5, 1.0]).view(3, 1, 1).expand(3, 8, 8))
    # Resolution does not change the tilt: the same ramp at half the size gives the same colours.
    half = normals_from_depth(torch.linspace(0, 1, 16).view(1, 1, 16, 1).expand(1, 1, 16, 24))
    assert torch.allclose(half[0, :, 8, 12], floor[:, 16, 24], atol=0.01)


def test_estimator_uses_the_depth_for_normals_and_returns_grey_depth():
    ramp = torch.linspace(0, 1, 20).view(1, 1, 20, 1).expand(1, 1, 20, 10)
    depth, normal = DepthNormalEstimator(_FixedDepth(ramp)).estimate(torch.zeros(1, 3, 20, 10))
    assert torch.equal(depth, ramp.expand(1, 3, 20, 10))
    assert torch.equal(normal, normals_from_depth(ramp))


def test_marigold_x_right_becomes_red_left():
    right, up, towards = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1)
                          for v in ([1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]))
    assert marigold_to_colour(right).flatten().tolist() == [0.0, 0.5, 0.5]  # facing right: no red
    assert marigold_to_colour(up).flatten().tolist() == [0.5, 1.0, 0.5]
    assert marigold_to_colour(towards).flatten().tolist() == [0.5, 0.5, 1.0]


def test_depth_normalisation_is_per_image():
    maps = torch.stack([torch.linspace(5, 7, 16).view(1, 4, 4), torch.full((1, 4, 4), 2.0)])
    normalised = normalise_per_image(maps)
    assert normalised[0].min() == 0 and normalised[0].max() == 1
    assert (normalised[1] == 0).all()  # a flat prediction has no near or far


def test_depth_predictions_are_near_bright(tiny_dirs):
    """The network's raw output (inverse depth) keeps its order: a larger raw value is brighter."""
    estimator = DepthEstimator.load(tiny_dirs["depth"])
    raw = {}

    def keep_raw(module, args, out):
        raw["depth"] = out.predicted_depth  # returns None: the output is left as it is

    estimator.model.register_forward_hook(keep_raw)
    image = _images(batch=1, height=28, width=28)  # the working size: no resampling between raw and result
    depth = estimator.predict(image)[0, 0]
    flat_raw, flat_depth = raw["depth"][0].flatten(), depth.flatten()
    assert flat_depth[flat_raw.argmax()] == 1 and flat_depth[flat_raw.argmin()] == 0


def test_missing_folders_name_folder_and_source(tmp_path):
    priors = tmp_path / "diffbody" / "priors"
    with pytest.raises(MissingModelFile) as error:
        check_depth_folder(str(priors / "Depth-Anything-V2-Large-hf"))
    message = str(error.value)
    assert "Depth-Anything-V2-Large-hf" in message and str(priors) in message
    assert "https://huggingface.co/depth-anything/Depth-Anything-V2-Large-hf" in message
    with pytest.raises(MissingModelFile) as error:
        check_normals_folder(str(priors / "marigold-normals-v1-1"))
    assert "https://huggingface.co/prs-eth/marigold-normals-v1-1" in str(error.value)
    with pytest.raises(MissingModelFile) as error:
        load_depth_normal_estimator(str(priors / "dpt-hybrid-midas"))
    assert "https://huggingface.co/Intel/dpt-hybrid-midas/tree/refs%2Fpr%2F5" in str(error.value)


def test_known_folders_are_in_the_priors_folder():
    for name in ("Depth-Anything-V2-Large-hf", "Depth-Anything-V2-Base-hf", "Depth-Anything-V2-Small-hf",
                 "dpt-hybrid-midas", "marigold-normals-v1-1"):
        assert KNOWN_FILES[name].folder == "diffbody_priors" and KNOWN_FILES[name].is_dir


def test_wrong_or_incomplete_folders_are_explained(tiny_dirs, tmp_path):
    with pytest.raises(WrongModelFile, match="not a depth model folder"):
        check_depth_folder(tiny_dirs["normals"])
    with pytest.raises(WrongModelFile, match="not a Marigold normals folder"):
        check_normals_folder(tiny_dirs["depth"])
    pickled = str(tmp_path / "pickled")
    shutil.copytree(tiny_dirs["depth"], pickled)
    os.replace(os.path.join(pickled, "model.safetensors"), os.path.join(pickled, "pytorch_model.bin"))
    with pytest.raises(WrongModelFile, match="safetensors only"):
        check_depth_folder(pickled)
    partial = str(tmp_path / "partial")
    shutil.copytree(tiny_dirs["normals"], partial)
    shutil.rmtree(os.path.join(partial, "unet"))
    with pytest.raises(MissingModelFile, match="incomplete.*unet"):
        check_normals_folder(partial)


def test_a_marigold_folder_with_only_fp16_weights_loads(tiny_dirs, tmp_path):
    """kijai/ComfyUI-Marigold keeps only the fp16 variant files (*.fp16.safetensors) in models/diffusers/."""
    from comfyui_diffbody.models.normal_estimator import MarigoldNormals, weights_variant

    variant = str(tmp_path / "marigold-normals-v1-1")
    shutil.copytree(tiny_dirs["normals"], variant)
    assert weights_variant(variant) is None
    for component in ("unet", "vae", "text_encoder"):
        for path in glob.glob(os.path.join(variant, component, "*.safetensors")):
            os.replace(path, path.removesuffix(".safetensors") + ".fp16.safetensors")
    assert weights_variant(variant) == "fp16"
    full, fp16 = MarigoldNormals.load(tiny_dirs["normals"]), MarigoldNormals.load(variant)
    for (name, tensor), (_, loaded) in zip(full.pipeline.unet.state_dict().items(),
                                           fp16.pipeline.unet.state_dict().items()):
        assert torch.equal(tensor, loaded), name
