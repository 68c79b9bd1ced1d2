"""The command line, as a user runs it: `python -m comfyui_diffbody restore ...`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_harness import REPO_ROOT

SAMPLE = REPO_ROOT / "assets" / "sample_person_lq.jpg"


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "comfyui_diffbody", "restore", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


STAGE0_FILES = [("general_swinir_v1.ckpt", "upscale_models"), ("yolox_l.onnx", "diffbody/pose"),
                ("dw-ll_ucoco_384.onnx", "diffbody/pose"), ("llava-1.5-7b-hf", "LLM")]
DIFFUSION_FILES = [("stable-diffusion-2-1-base", "diffusers"), ("diffbody_stage1_unet.safetensors", "diffbody"),
                   ("diffbody_stage1_controlnet.safetensors", "diffbody"),
                   ("stable-diffusion-xl-base-1.0", "diffusers"),
                   ("diffbody_stage2_controlnet.safetensors", "diffbody"),
                   ("diffbody_colour_adapter.safetensors", "ipadapter"),
                   ("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "clip_vision")]
SINGLE_FILES = ["v2-1_512-ema-pruned.safetensors", "sd_xl_base_1.0.safetensors"]


def test_tiny_run_restores_and_saves_every_prior(tmp_path):
    # native size mode: the same plumbing as the default bucket mode, on a quarter of the pixels
    # --tiny alone saves the priors (no --save-priors): the plumbing check shows every stage's output
    result = run_cli(SAMPLE, "--tiny", "--upscale", "2", "--size-mode", "native",
                     "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "plumbing" in result.stdout
    out = tmp_path / "out"
    width, height = Image.open(SAMPLE).size
    for suffix in ("restored", "ir", "pose", "stage1", "depth", "normal"):
        assert Image.open(out / f"sample_person_lq_{suffix}.png").size == (2 * width, 2 * height), suffix
    frame = json.loads((out / "sample_person_lq_pose.json").read_text())
    assert frame["canvas_width"] == 2 * width
    assert (out / "sample_person_lq_caption.txt").read_text().strip()
    assert (out / "sample_person_lq_recaption.txt").read_text().strip()
    for stage in ("stage 1", "stage 2"):  # the tqdm bars, with the tiny default of 2 steps each
        assert stage in result.stderr
    assert "2/2" in result.stderr


def test_per_person_writes_the_result_and_every_crop(tmp_path):
    """restore --per-person --tiny on a collage of four people (testing/photos.py): the tiny random DWPose finds
    whoever it finds (its weights are random), and every person it found gets an I_ir crop and a restored crop
    at a training bucket's size, listed in <stem>_people.json with its caption; the result has I_ir's size.
    The cheap settings of a plumbing check: SwinIR as the global pass, one step per stage, a small collage."""
    from comfyui_diffbody.pipelines.buckets import BUCKETS
    from comfyui_diffbody.testing.photos import people_collage

    photo = tmp_path / "group.png"
    Image.fromarray(people_collage(96)).save(photo)
    result = run_cli(photo, "--tiny", "--per-person", "--global-pass", "swinir", "--stage1-steps", "1",
                     "--stage2-steps", "1", "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    assert Image.open(out / "group_restored.png").size == Image.open(photo).size
    data = json.loads((out / "group_people.json").read_text())
    regions, listed = data["people"]["regions"], data["crops"]
    assert regions and len(listed) == len(regions), (len(regions), len(listed))
    assert not (out / "group_faces.json").exists()  # no --face-pass
    for k, entry in enumerate(listed):
        bucket = tuple(regions[entry["region"]]["bucket"])
        assert bucket in BUCKETS
        for suffix in ("crop", "restored"):
            assert Image.open(out / f"group_person{k}_{suffix}.png").size == bucket[::-1], (k, suffix)
        assert entry["file"] == f"group_person{k}_restored.png" and entry["caption"].strip()
    person_files = sorted(path.name for path in out.glob("group_person*"))
    assert len(person_files) == 2 * len(regions), person_files
    assert "*_person<k>_crop.png" in result.stdout and "*_global.png" in result.stdout  # --tiny saves the priors
    assert (out / "group_global.png").is_file() and (out / "group_ir.png").is_file()
    # a rerun with --face-pass is not skipped as done: it waits for <stem>_faces.json too
    from comfyui_diffbody import cli

    face_pass = cli.build_parser().parse_args(["restore", str(photo), "--per-person", "--face-pass"])
    assert "faces.json" in cli.output_suffixes(face_pass)


def test_fast_run_reuses_the_first_caption(tmp_path):
    """--fast: stage 2 is prompted by p, so LLaVA runs once (no re-caption bar, no *_recaption.txt); the run
    above, without --fast, writes one."""
    photo = tmp_path / "small.png"
    Image.open(SAMPLE).convert("RGB").resize((96, 64)).save(photo)
    result = run_cli(photo, "--tiny", "--fast", "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    assert Image.open(out / "small_restored.png").size == (96, 64)
    assert (out / "small_caption.txt").read_text().strip()
    assert not (out / "small_recaption.txt").exists() and "re-caption" not in result.stderr
    assert "recaption" not in result.stdout


def test_stage0_only_on_a_folder_writes_the_stage0_outputs(tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    Image.open(SAMPLE).save(images / "a.png")
    Image.open(SAMPLE).resize((40, 24)).save(images / "b.jpg")
    (images / "notes.txt").write_text("not an image")
    result = run_cli(images, "--tiny", "--stage0-only", "--upscale", "2", "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "plumbing" in result.stdout
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*_ir.png")) == ["a_ir.png", "b_ir.png"]
    width, height = Image.open(SAMPLE).size
    assert Image.open(out / "a_ir.png").size == (2 * width, 2 * height)
    assert Image.open(out / "a_pose.png").size == (2 * width, 2 * height)
    assert Image.open(out / "b_pose.png").size == (80, 48)
    assert json.loads((out / "a_pose.json").read_text())["canvas_width"] == 2 * width
    assert (out / "a_caption.txt").read_text().strip()
    assert not list(out.glob("*_restored.png"))
    assert "stage 1" not in result.stderr


def test_without_weights_lists_every_missing_file_and_exits_non_zero(tmp_path):
    models = tmp_path / "models"
    result = run_cli(SAMPLE, "--models-dir", models, "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2
    for name, folder in STAGE0_FILES + DIFFUSION_FILES:
        assert f"'{name}'" in result.stderr and str(models / folder) in result.stderr, name
    assert "Missing model files (11)" in result.stderr
    assert "huggingface.co/stabilityai/stable-diffusion-2-1-base" in result.stderr
    assert "huggingface.co/stabilityai/stable-diffusion-xl-base-1.0" in result.stderr
    for name in SINGLE_FILES:  # SD 2.1 and SDXL: the diffusers folder or the single file ComfyUI loads
        assert f"'{name}' in {models / 'checkpoints'}" in result.stderr, name
    assert "No DiffBody weights are public" in result.stderr
    assert not (tmp_path / "out").exists()


def test_stage0_only_without_weights_asks_for_the_stage0_files_alone(tmp_path):
    models = tmp_path / "models"
    result = run_cli(SAMPLE, "--stage0-only", "--models-dir", models, "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2
    assert "Missing model files (4)" in result.stderr
    for name, _ in DIFFUSION_FILES:
        assert name not in result.stderr


PUBLIC_FILES = [("stable-diffusion-xl-base-1.0", "diffusers"), ("controlnet-union-sdxl-1.0.safetensors", "controlnet"),
                ("ip-adapter-plus_sdxl_vit-h.safetensors", "ipadapter"),
                ("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "clip_vision"),
                ("Depth-Anything-V2-Small-hf", "diffbody/priors"), ("marigold-normals-v1-1", "diffbody/priors")]


def test_public_mode_on_tiny_weights_restores_from_estimated_priors(tmp_path):
    result = run_cli(SAMPLE, "--tiny", "--mode", "public", "--upscale", "2", "--size-mode", "native", "--save-priors",
                     "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "public-weights mode" in result.stdout and "plumbing" in result.stdout
    out = tmp_path / "out"
    width, height = Image.open(SAMPLE).size
    for suffix in ("restored", "ir", "pose", "depth", "normal"):
        assert Image.open(out / f"sample_person_lq_{suffix}.png").size == (2 * width, 2 * height), suffix
    assert (out / "sample_person_lq_caption.txt").read_text().strip()
    assert not (out / "sample_person_lq_stage1.png").exists()  # no stage 1, no re-caption
    assert not (out / "sample_person_lq_recaption.txt").exists()
    assert "depth and normal priors" in result.stderr and "stage 2" in result.stderr
    assert "stage 1" not in result.stderr


def test_public_mode_without_weights_lists_only_public_files(tmp_path):
    models = tmp_path / "models"
    result = run_cli(SAMPLE, "--mode", "public", "--models-dir", models, "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2
    assert "Missing model files (10)" in result.stderr
    for name, folder in STAGE0_FILES + PUBLIC_FILES:
        assert f"'{name}'" in result.stderr and str(models / folder) in result.stderr, name
    assert "xinsir/controlnet-union-sdxl-1.0/resolve/main/diffusion_pytorch_model_promax.safetensors" in result.stderr
    assert "diffbody_" not in result.stderr and "No DiffBody weights are public" not in result.stderr
    assert result.stderr.count("Download ") == 11  # every file has a public source (SDXL two: folder, single file)
    assert not (tmp_path / "out").exists()


def test_public_mode_with_normals_from_depth_needs_no_normal_model(tmp_path):
    from comfyui_diffbody import cli
    from comfyui_diffbody.pipelines.depth_normal import FROM_DEPTH

    assert cli.FROM_DEPTH == FROM_DEPTH
    result = run_cli(SAMPLE, "--mode", "public", "--normal-source", FROM_DEPTH, "--depth-model",
                     "Depth-Anything-V2-Large-hf", "--models-dir", tmp_path / "models", cwd=tmp_path)
    assert result.returncode == 2 and "Missing model files (9)" in result.stderr
    assert "'Depth-Anything-V2-Large-hf'" in result.stderr and "marigold" not in result.stderr


def test_single_files_in_checkpoints_stand_in_for_the_diffusers_folders(tmp_path):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    for name in SINGLE_FILES:
        (models / "checkpoints" / name).write_bytes(b"")
    result = run_cli(SAMPLE, "--models-dir", models, "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2 and "Missing model files (9)" in result.stderr
    for name in ["stable-diffusion-2-1-base", "stable-diffusion-xl-base-1.0"] + SINGLE_FILES:
        assert name not in result.stderr, name


def test_single_file_options_reach_the_pipelines_model_paths(tiny_models_dir, tiny_single_files, monkeypatch,
                                                             capsys):
    from comfyui_diffbody import cli
    from comfyui_diffbody.models import files

    def paths(*options):
        args = cli.build_parser().parse_args(["restore", str(SAMPLE), *options])
        return cli.model_paths(args, cli.resolve_files(args, tiny_models_dir), tiny_models_dir)

    folders = {kind: str(tiny_models_dir / "diffusers" / f"tiny-{kind}") for kind in ("sdxl", "sd21")}
    found = paths("--tiny")
    assert (found.sdxl, found.sd21, found.sdxl_tokenizer, found.sd21_tokenizer) == (folders["sdxl"], folders["sd21"],
                                                                                    None, None)
    found = paths("--tiny", "--sdxl", tiny_single_files["sdxl"], "--sd21", tiny_single_files["sd21"])
    assert (found.sdxl, found.sd21) == (tiny_single_files["sdxl"], tiny_single_files["sd21"])
    assert (found.sdxl_tokenizer, found.sd21_tokenizer) == (folders["sdxl"], folders["sd21"])  # tiny vocabularies
    # without --tiny: ComfyUI's tokenizer files, a --clip-tokenizer folder, or exit 2 saying where to put them
    args = cli.build_parser().parse_args(["restore", str(SAMPLE)])
    single = {"sdxl": tiny_single_files["sdxl"]}
    comfy_tokenizer = os.path.join(os.environ["DIFFBODY_COMFYUI_DIR"], "comfy", "sd1_tokenizer")
    assert cli.clip_tokenizer_sources(args, tiny_models_dir, single) == {"sdxl_tokenizer": comfy_tokenizer}
    args.clip_tokenizer = Path(folders["sdxl"])
    assert cli.clip_tokenizer_sources(args, tiny_models_dir, single) == {"sdxl_tokenizer": folders["sdxl"]}
    args.clip_tokenizer = None
    monkeypatch.delenv("DIFFBODY_COMFYUI_DIR")
    monkeypatch.setattr(files, "PACK_ROOT", tiny_models_dir / "not-in-ComfyUI")
    with pytest.raises(SystemExit) as error:
        cli.clip_tokenizer_sources(args, tiny_models_dir, single)
    assert error.value.code == 2 and "--clip-tokenizer" in capsys.readouterr().err


def test_tiny_run_from_single_files_matches_the_folder_run(tmp_path, tiny_single_files):
    """--sdxl / --sd21 with the tiny folders converted to single files by ComfyUI's converters: every output of
    the plumbing check (stage 1 reads SD 2.1's VAE and text encoder, stage 2 all of SDXL) equals the folder run's."""
    from conftest import person_photo

    source = tmp_path / "person.png"  # small, one thread: two runs in about a minute
    Image.fromarray(person_photo()).resize((64, 64), Image.BICUBIC).save(source)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {"folders": (), "single": ("--sdxl", tiny_single_files["sdxl"], "--sd21", tiny_single_files["sd21"])}
    for name, options in runs.items():
        run = subprocess.run([sys.executable, "-m", "comfyui_diffbody", "restore", str(source), "--tiny", "--size-mode",
                              "native", *options, "--out", str(tmp_path / name)], capture_output=True, text=True,
                             cwd=tmp_path, timeout=600, env=env)
        assert run.returncode == 0, run.stderr[-3000:]
    written = sorted(p.name for p in (tmp_path / "folders").iterdir())
    assert "person_restored.png" in written and "person_stage1.png" in written
    assert sorted(p.name for p in (tmp_path / "single").iterdir()) == written
    for name in written:
        folder_file, single_file = tmp_path / "folders" / name, tmp_path / "single" / name
        if name.endswith(".png"):
            assert np.array_equal(np.asarray(Image.open(folder_file)), np.asarray(Image.open(single_file))), name
        else:
            assert folder_file.read_text() == single_file.read_text(), name
