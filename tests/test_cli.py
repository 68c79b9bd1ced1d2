"""The command line, as a user runs it: `python -m comfyui_diffbody restore ...`."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image

from comfy_harness import REPO_ROOT

SAMPLE = REPO_ROOT / "assets" / "sample_person_lq.jpg"


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "comfyui_diffbody", "restore", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


def test_tiny_run_writes_every_stage0_output(tmp_path):
    result = run_cli(SAMPLE, "--tiny", "--upscale", "2", "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "plumbing" in result.stdout
    out = tmp_path / "out"
    width, height = Image.open(SAMPLE).size
    assert Image.open(out / "sample_person_lq_ir.png").size == (2 * width, 2 * height)
    assert Image.open(out / "sample_person_lq_pose.png").size == (2 * width, 2 * height)
    frame = json.loads((out / "sample_person_lq_pose.json").read_text())
    assert frame["canvas_width"] == 2 * width
    assert (out / "sample_person_lq_caption.txt").read_text().strip()


def test_without_weights_lists_every_missing_file_and_exits_non_zero(tmp_path):
    models = tmp_path / "models"
    result = run_cli(SAMPLE, "--models-dir", models, "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2
    for name, folder in [("general_swinir_v1.ckpt", "upscale_models"), ("yolox_l.onnx", "diffbody/pose"),
                         ("dw-ll_ucoco_384.onnx", "diffbody/pose"), ("llava-1.5-7b-hf", "LLM")]:
        assert name in result.stderr and str(models / folder) in result.stderr
    assert "huggingface.co" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_folder_of_images_is_processed(tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    for name in ("a.png", "b.jpg"):
        Image.open(SAMPLE).resize((40, 24)).save(images / name)
    (images / "notes.txt").write_text("not an image")
    result = run_cli(images, "--tiny", "--no-caption", "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").glob("*_ir.png")) == ["a_ir.png", "b_ir.png"]
