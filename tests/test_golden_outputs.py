"""Golden outputs: what every pipeline, the command line and every bundled workflow produce today on the
tiny weights, with fixed seeds, kept under tests/golden/ so a refactor can prove it changed nothing
(issue 15: "no behaviour change, outputs bit-equal").

Each case compares the current code against its stored data and prints one line, `GOLDEN <case>:
bit-identical` or `GOLDEN <case>: max |diff| <d>`, so a run with `-s` measures "bit-equal" directly.
Tolerances: float outputs `atol 1e-5, rtol 0` (diffusers' Marigold normals 1e-4: LIBRARY_PIPELINE_ATOL); uint8 images max abs
difference 1; text exactly.

Data: float32 tensors in .npz, images as PNG (compared decoded, as uint8 arrays), captions and pose
keypoints as text. tests/golden/formats/ holds the pack's own weight files written by the save functions
of the format_version they were made with; tests/golden/workflows/ the bundled UI workflows as they were.

Regenerate (only when an output is meant to change, and say why in the commit):
    DIFFBODY_UPDATE_GOLDEN=1 $PY -m pytest tests/test_golden_outputs.py
Add `-m "not server"` / `-m server` to refresh one half. The format files are written only when
missing (delete them to rewrite them: they stand for files users already have).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_harness import REPO_ROOT, execution_error
from conftest import person_photo
from workflow_tools import API_DIR, WORKFLOWS_DIR

# -- names a refactor may move: the one place to fix when they do ------------------------------------------
from comfyui_diffbody.models.colour_adapter import ColourAdapter, ColourAdapterConfig, load_colour_adapter
from comfyui_diffbody.models.joint_unet import JointUNet, JointUNetConfig
from comfyui_diffbody.models.multiprior_controlnet import MultiPriorControlNet, MultiPriorControlNetConfig
from comfyui_diffbody.models.sd21_components import load_sd21_components
from comfyui_diffbody.models.sdxl_components import load_clip_vision, load_sdxl_parts
from comfyui_diffbody.models.stage1_controlnet import Stage1ControlNet
from comfyui_diffbody.models.stage1_weights import (load_stage1_controlnet, load_stage1_unet, save_stage1_controlnet,
                                                    save_stage1_unet)
from comfyui_diffbody.models.stage2_weights import load_multiprior, save_colour_adapter, save_multiprior
from comfyui_diffbody.models.swinir import load_swinir
from comfyui_diffbody.models.union_controlnet import load_union_controlnet
from comfyui_diffbody.pipelines.caption import LlavaCaptioner
from comfyui_diffbody.pipelines.cleanup import clean_images
from comfyui_diffbody.pipelines.depth_normal import load_depth_normal_estimator
from comfyui_diffbody.pipelines.pose.backends import make_estimator
from comfyui_diffbody.pipelines.stage0 import Stage0Options, run_stage0
from comfyui_diffbody.pipelines.stage1 import SCHEDULERS as STAGE1_SCHEDULERS
from comfyui_diffbody.pipelines.stage1 import Stage1Pipeline
from comfyui_diffbody.pipelines.stage2 import SCHEDULERS as STAGE2_SCHEDULERS
from comfyui_diffbody.pipelines.stage2 import Stage2Pipeline, Stage2Settings
from comfyui_diffbody.pipelines.union_control import UnionPriorControl
from comfyui_diffbody.testing.tiny.stage2 import tiny_clip_vision_kwargs
from comfyui_diffbody.testing.tiny.union import tiny_union_config
from test_workflows import runnable  # exactly how tests/test_workflows.py prepares a bundled workflow
# ----------------------------------------------------------------------------------------------------------

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("DIFFBODY_UPDATE_GOLDEN") == "1"
FLOAT_ATOL = 1e-5
# diffusers' Marigold normals pipeline runs its own UNet loop and renormalises each normal to unit length, which
# magnifies float rounding: a newer (unpinned) diffusers/torch moved 4 of 12288 values by up to 1.45e-5 with no
# change in the pack (2026-12-02, diffusers 0.42.1, torch 2.14.1). A refactor of ours moves values by far more.
LIBRARY_PIPELINE_ATOL = 1e-4
UINT8_TOLERANCE = 1
SIZE = 64  # px: the smallest stage-1 canvas, and a multiple of the tiny SDXL's 32
STEPS = 2
PROMPT = "a photo of a person"


# -- comparing and recording ---------------------------------------------------------------------------------

def report(case: str, max_diff: float) -> None:
    print(f"GOLDEN {case}: " + ("bit-identical" if max_diff == 0 else f"max |diff| {max_diff:.3g}"))


def check_floats(case: str, arrays: dict[str, torch.Tensor], atol: float = FLOAT_ATOL) -> None:
    """Float tensors against tests/golden/<case>.npz (float32)."""
    path = GOLDEN / f"{case}.npz"
    produced = {k: v.detach().float().cpu().numpy() for k, v in arrays.items()}
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **produced)
    with np.load(path) as stored:
        assert sorted(stored.files) == sorted(produced), case
        expected = {key: stored[key] for key in stored.files}
    for key, value in produced.items():
        assert value.shape == expected[key].shape, (case, key, value.shape, expected[key].shape)
    report(case, max(float(np.abs(v - expected[k]).max()) if v.size else 0.0 for k, v in produced.items()))
    for key, value in produced.items():
        np.testing.assert_allclose(value, expected[key], atol=atol, rtol=0, err_msg=f"{case}/{key}")


def check_image(case: str, image: np.ndarray | Path) -> None:
    """An HxWx3 uint8 image (or a PNG file) against tests/golden/<case>.png."""
    path = GOLDEN / f"{case}.png"
    array = read_png(image) if isinstance(image, Path) else image
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
    stored = read_png(path)
    assert array.shape == stored.shape, (case, array.shape, stored.shape)
    diff = int(np.abs(array.astype(np.int16) - stored.astype(np.int16)).max())
    report(case, diff)
    assert diff <= UINT8_TOLERANCE, f"{case}: max |diff| {diff}"


def check_text(case: str, text: str, suffix: str = ".txt") -> None:
    path = GOLDEN / f"{case}{suffix}"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    same = path.read_text(encoding="utf-8") == text
    print(f"GOLDEN {case}: " + ("identical text" if same else "TEXT DIFFERS"))
    assert same, f"{case}: {text!r} != {path.read_text(encoding='utf-8')!r}"


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def to_uint8(chw: torch.Tensor) -> np.ndarray:
    """(3,H,W) float in 0..1 -> HxWx3 uint8, rounded (not pipelines.image's, which may move)."""
    return (chw.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


# -- inputs ------------------------------------------------------------------------------------------------

def photo(size: int = SIZE) -> torch.Tensor:
    """(1,3,size,size) float in 0..1: the astronaut (tests/conftest.py's person_photo), resized."""
    image = Image.fromarray(person_photo()).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255


def synthetic_pose(size: int = SIZE) -> torch.Tensor:
    """A fixed skeleton-like prior: two coloured limbs on black."""
    pose = torch.zeros(1, 3, size, size)
    pose[:, 0, size // 4: 3 * size // 4, size // 2 - 1: size // 2 + 1] = 0.6
    pose[:, 1, size // 3 - 1: size // 3 + 1, size // 4: 3 * size // 4] = 0.6
    return pose


def stage2_priors() -> dict[str, torch.Tensor]:
    image = photo()
    grey = image.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    return {"image": image, "pose": synthetic_pose(), "depth": grey.contiguous(), "normal": image.flip(-1)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tiny_models_dir) -> Path:
    return Path(tiny_models_dir)


# -- stage 0 -----------------------------------------------------------------------------------------------

def test_stage0_cleanup_pose_and_caption(models):
    """run_stage0 as the command line drives it: SwinIR (DiffBIR v1 layout), DWPose, LLaVA."""
    swinir = load_swinir(str(models / "upscale_models" / "general_swinir_v1.ckpt"))
    pose_dir = models / "diffbody" / "pose"
    estimator = make_estimator("dwpose", {"det": str(pose_dir / "yolox_l.onnx"),
                                          "pose": str(pose_dir / "dw-ll_ucoco_384.onnx")}, device="cpu")
    captioner = LlavaCaptioner.load(str(models / "LLM" / "llava-1.5-7b-hf"))
    out = run_stage0(photo(), swinir=swinir, pose_estimator=estimator, captioner=captioner,
                     options=Stage0Options(max_new_tokens=16, seed=3), device=torch.device("cpu"))
    check_floats("stage0_cleaned", {"cleaned": out.cleaned})
    check_image("stage0_pose", to_uint8(out.pose_images[0]))
    check_text("stage0_keypoints", json.dumps(out.keypoints, indent=1, sort_keys=True), ".json")
    check_text("stage0_caption", "\n".join(out.captions))


def test_cleanup_with_the_diffbir_v2_swinir_and_upscale(models):
    swinir = load_swinir(str(models / "upscale_models" / "realesrgan_s4_swinir_100k.pth"))
    check_floats("cleanup_v2_upscale1.5", {"cleaned": clean_images(swinir, photo(48), upscale=1.5)})


@pytest.mark.parametrize("normal_source", ["marigold", "from_depth"])
def test_depth_and_normal_estimators(models, normal_source):
    priors = models / "diffbody" / "priors"
    normals = str(priors / "tiny-marigold-normals") if normal_source == "marigold" else None
    estimator = load_depth_normal_estimator(str(priors / "tiny-depth-anything"), normals, normal_steps=2, seed=5)
    depth, normal = estimator.estimate(photo())
    check_floats(f"depth_normal_{normal_source}", {"depth": depth, "normal": normal},
                 atol=LIBRARY_PIPELINE_ATOL if normal_source == "marigold" else FLOAT_ATOL)


# -- stage 1 -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage1_parts(models):
    components = load_sd21_components(str(models / "diffusers" / "tiny-sd21"))
    unet = load_stage1_unet(str(models / "diffbody" / "diffbody_stage1_unet.safetensors"))
    controlnet = load_stage1_controlnet(str(models / "diffbody" / "diffbody_stage1_controlnet.safetensors"))
    return components, unet, controlnet


STAGE1_CASES = [(name, 7.5, True) for name in STAGE1_SCHEDULERS] + [("ddim", 1.0, True), ("ddpm", 7.5, False)]


@pytest.mark.parametrize("scheduler,cfg,with_controlnet", STAGE1_CASES)
def test_stage1_pipeline(stage1_parts, scheduler, cfg, with_controlnet):
    components, unet, controlnet = stage1_parts
    pipe = Stage1Pipeline(unet, controlnet if with_controlnet else None, components.vae, components.text_encoder)
    out = pipe(photo(), synthetic_pose(), [PROMPT], "blurry", steps=STEPS, scheduler=scheduler, cfg=cfg, seed=7,
               size_mode="native")
    case = f"stage1_{scheduler}_cfg{cfg:g}_{'controlnet' if with_controlnet else 'no_controlnet'}"
    check_floats(case, {"rgb": out.rgb, "depth": out.depth, "normal": out.normal})


# -- stage 2 -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sdxl_parts(models):
    unet, vae, text_encoders = load_sdxl_parts(str(models / "diffusers" / "tiny-sdxl"))
    image_encoder = load_clip_vision(str(models / "clip_vision" / "tiny_clip_vision.safetensors"),
                                     config=tiny_clip_vision_kwargs())
    return unet, vae, text_encoders, image_encoder


@pytest.fixture(scope="module")
def diffbody_stage2(models, sdxl_parts):
    """DiffBody's stage 2: the multi-prior ControlNet and the colour adapter."""
    unet, vae, text_encoders, image_encoder = sdxl_parts
    controlnet = load_multiprior(str(models / "diffbody" / "diffbody_stage2_controlnet.safetensors"))
    adapter = load_colour_adapter(str(models / "ipadapter" / "diffbody_colour_adapter.safetensors"), unet.config)
    return Stage2Pipeline(unet, vae, text_encoders, controlnet, adapter, image_encoder)


STAGE2_CASES = [(name, 5.0) for name in STAGE2_SCHEDULERS] + [("dpmpp_2m", 1.0)]


@pytest.mark.parametrize("scheduler,cfg", STAGE2_CASES)
def test_stage2_pipeline_multiprior_and_colour_adapter(diffbody_stage2, scheduler, cfg):
    settings = Stage2Settings(prompt=PROMPT, negative_prompt="blurry", scheduler=scheduler, steps=STEPS, cfg=cfg,
                              seed=11, strengths={"image": 1.0, "pose": 0.8, "depth": 0.6, "normal": 0.4},
                              adapter_weight=0.7)
    restored = diffbody_stage2(stage2_priors(), photo().flip(-2), settings)
    check_floats(f"stage2_{scheduler}_cfg{cfg:g}", {"restored": restored})


@pytest.mark.parametrize("cfg", [5.0, 1.0])
def test_stage2_public_union_mode(models, sdxl_parts, cfg):
    """The public-weights mode: ControlNet-Union SDXL (UnionPriorControl) + IP-Adapter Plus XL."""
    unet, vae, text_encoders, image_encoder = sdxl_parts
    union = UnionPriorControl(load_union_controlnet(
        str(models / "controlnet" / "controlnet-union-sdxl-1.0.safetensors"), config=tiny_union_config()))
    adapter = load_colour_adapter(str(models / "ipadapter" / "ip-adapter-plus_sdxl_vit-h.safetensors"), unet.config)
    pipe = Stage2Pipeline(unet, vae, text_encoders, union, adapter, image_encoder)
    settings = Stage2Settings(prompt=PROMPT, scheduler="ddpm", steps=STEPS, cfg=cfg, seed=13,
                              strengths={"image": 1.0, "pose": 0.9, "depth": 0.7, "normal": 0.5})
    priors = stage2_priors()
    check_floats(f"stage2_union_cfg{cfg:g}", {"restored": pipe(priors, priors["image"], settings)})


# -- the command line --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["diffbody", "public"])
def test_command_line_tiny_restore(tmp_path, mode):
    """`python -m comfyui_diffbody restore --tiny` as tests/test_cli.py drives it; every file it saves."""
    source = tmp_path / "person.png"
    Image.fromarray(to_uint8(photo()[0])).save(source)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as in-process above: one float-reduction order
    run = subprocess.run([sys.executable, "-m", "comfyui_diffbody", "restore", str(source), "--tiny", "--mode", mode,
                          "--size-mode", "native", "--seed", "3", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    saved = sorted((tmp_path / "out").iterdir())
    expected = {"diffbody": ["caption.txt", "depth.png", "ir.png", "normal.png", "pose.json", "pose.png",
                             "recaption.txt", "restored.png", "stage1.png"],
                "public": ["caption.txt", "depth.png", "ir.png", "normal.png", "pose.json", "pose.png",
                           "restored.png"]}[mode]
    assert [path.name.removeprefix("person_") for path in saved] == expected
    for path in saved:
        name = path.name.removeprefix("person_")
        if path.suffix == ".png":
            check_image(f"cli_{mode}_{name.removesuffix('.png')}", path)
        else:
            check_text(f"cli_{mode}_{name}", path.read_text(encoding="utf-8"), suffix="")


# -- files in today's format -------------------------------------------------------------------------------

FORMATS = GOLDEN / "formats"
FORMAT_VERSION = "1"  # what the files below were written in (their safetensors metadata says so)
# Micro networks (the factory's tiny ones are 1.6-12 MB): a two-level joint UNet and an SDXL-layout UNet
# config of three levels, for the multi-prior ControlNet and the colour adapter.
MICRO_JOINT_UNET = dict(block_out_channels=(8, 16), attention_head_dim=(1, 2), cross_attention_dim=8,
                        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, norm_num_groups=4,
                        sample_size=8)
MICRO_SDXL_UNET = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [8, 16, 16], "transformer_layers_per_block": [1, 1, 1], "attention_head_dim": [1, 1, 1],
    "cross_attention_dim": 16, "use_linear_projection": True, "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 8 + 6 * 256, "norm_num_groups": 4,
}


def randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn from one seeded stream, so no tensor is a default zero or one."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return module.eval()


def format_models() -> dict[str, tuple[torch.nn.Module, object, object]]:
    """file name -> (the network as built today, its save function, a loader of the file)."""
    unet = randomised(JointUNet(JointUNetConfig(**MICRO_JOINT_UNET)), 0)
    multiprior_config = MultiPriorControlNetConfig.from_unet_config(
        MICRO_SDXL_UNET, conditioning_embedding_out_channels=(4, 4, 8, 8))
    adapter_config = ColourAdapterConfig.for_unet(MICRO_SDXL_UNET, dim=16, depth=4, dim_head=64, heads=1,
                                                  num_queries=4, embedding_dim=8, output_dim=16, ff_mult=4)
    return {
        "diffbody_stage1_unet.safetensors": (unet, save_stage1_unet, load_stage1_unet),
        "diffbody_stage1_controlnet.safetensors": (randomised(Stage1ControlNet.from_unet(unet), 1),
                                                   save_stage1_controlnet, load_stage1_controlnet),
        "diffbody_stage2_controlnet.safetensors": (randomised(MultiPriorControlNet(multiprior_config), 2),
                                                   save_multiprior, load_multiprior),
        "diffbody_colour_adapter.safetensors": (randomised(ColourAdapter(adapter_config), 3), save_colour_adapter,
                                                lambda path: load_colour_adapter(path, MICRO_SDXL_UNET)),
    }


@pytest.mark.parametrize("name", list(format_models()))
def test_files_in_todays_format_still_load(name):
    """Files written by the save functions of format_version 1 load through today's public loaders, every
    tensor equal to the network they were written from (rebuilt here from the same seed)."""
    from safetensors import safe_open

    model, save, load = format_models()[name]
    path = FORMATS / name
    if UPDATE and not path.exists():
        save(model, str(path))
    assert path.stat().st_size < 500_000, name
    with safe_open(str(path), framework="pt") as f:
        assert (f.metadata() or {}).get("format_version") == FORMAT_VERSION, name
    written, loaded = model.state_dict(), load(str(path)).state_dict()
    assert list(loaded) == list(written), name
    for key, tensor in written.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), (name, key)
    report(f"format {name}", 0.0)


# -- the bundled workflows ---------------------------------------------------------------------------------

GOLDEN_WORKFLOWS = GOLDEN / "workflows"  # copies of workflows/*.json and workflows/api/*_api.json as they were
GOLDEN_API_FILES = sorted(p.name for p in (GOLDEN_WORKFLOWS / "api").glob("*_api.json"))


def test_bundled_workflows_are_the_golden_copies():
    """Every bundled workflow file, byte for byte, is today's (the generated ones are also checked against
    the generator below; diffbody_stage0_api.json is hand-written)."""
    bundled = sorted(p.relative_to(WORKFLOWS_DIR).as_posix() for p in [*WORKFLOWS_DIR.glob("*.json"),
                                                                         *API_DIR.glob("*.json")])
    if UPDATE:  # before the workflow-output test below, which runs these copies
        for name in bundled:
            shutil.copyfile(WORKFLOWS_DIR / name, GOLDEN_WORKFLOWS / name)
    copies = sorted(p.relative_to(GOLDEN_WORKFLOWS).as_posix() for p in GOLDEN_WORKFLOWS.rglob("*.json"))
    assert bundled == copies
    for name in copies:
        assert (WORKFLOWS_DIR / name).read_bytes() == (GOLDEN_WORKFLOWS / name).read_bytes(), name


def test_workflow_generator_still_writes_the_golden_copies(comfy_server):
    """scripts/build_workflows.py, against the live server's /object_info, renders today's files exactly."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_workflows", REPO_ROOT / "scripts" / "build_workflows.py")
    builder = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = builder  # its dataclasses look their module up there
    spec.loader.exec_module(builder)
    rendered = builder.render(comfy_server.object_info())
    assert rendered
    for name, text in rendered.items():
        assert (GOLDEN_WORKFLOWS / name).read_text() == text, name


DIGESTS = GOLDEN / "workflow_image_digests.json"
CROP = 128


def check_large_image(case: str, image: np.ndarray) -> None:
    """A workflow output (512 px of tiny-weight noise, ~600 KB as PNG: all of them would be ~10 MB): the
    SHA-256 of its pixels proves it bit-identical; its central 128x128 crop, kept as PNG, gives the max
    difference (and the uint8 tolerance) when it is not."""
    digest = {"shape": list(image.shape), "sha256": hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()}
    if UPDATE:
        stored = json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {}
        DIGESTS.write_text(json.dumps({**stored, case: digest}, indent=1, sort_keys=True) + "\n")
    top, left = (image.shape[0] - CROP) // 2, (image.shape[1] - CROP) // 2
    check_image(f"{case}_centre", image[top:top + CROP, left:left + CROP])
    expected = json.loads(DIGESTS.read_text())[case]
    assert digest["shape"] == expected["shape"], (case, digest["shape"], expected["shape"])
    print(f"GOLDEN {case}: " + ("whole image bit-identical" if digest == expected
                                else "whole image NOT bit-identical (the centre's difference above)"))


@pytest.mark.parametrize("api_name", GOLDEN_API_FILES)
def test_workflow_outputs_on_tiny_weights(comfy_server, api_name):
    """Every output of every bundled API workflow (the golden copy), run as tests/test_workflows.py runs it."""
    prompt = runnable(json.loads((GOLDEN_WORKFLOWS / "api" / api_name).read_text()))
    entry = comfy_server.run(prompt, timeout=900)
    assert entry["status"]["status_str"] == "success", (execution_error(entry) or {}).get("exception_message")
    stem = api_name.removesuffix("_api.json")
    assert entry["outputs"]
    for node_id, shown in sorted(entry["outputs"].items()):
        images = list(shown.get("images", []))
        images += [image for pair in shown.get("diffbody_compare", []) for image in pair.values()]
        files = comfy_server.output_files({"outputs": {node_id: {"images": images}}})
        for index, path in enumerate(files):
            check_large_image(f"workflow_{stem}_{node_id}_{index}", read_png(path))
        if "text" in shown:
            check_text(f"workflow_{stem}_{node_id}", "\n".join(shown["text"]))
        assert files or "text" in shown, (api_name, node_id, shown)
