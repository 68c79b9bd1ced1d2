"""The path users take today, at real size (issue 11): every bundled workflow through a real ComfyUI server on
real-size files with random weights, loaded by ComfyUI's stock loaders (Load Checkpoint, Load ControlNet
Model, Load CLIP Vision) and by ours, with no test stand-ins.

The files come from the real-size fixture factory (comfyui_diffbody.testing.realsize), built once into
~/.cache/comfyui-diffbody/realsize (DIFFBODY_REALSIZE_CACHE overrides the root) by a subprocess.
DIFFBODY_REALSIZE_MODELS_DIR runs the same tests on another models folder instead, e.g. real weights.

Each workflow runs in its own server, so the peak RSS printed is that workflow's. The server runs with
ComfyUI's bf16 UNet and text-encoder flags (`SERVER_ARGS`): in fp32 the public workflow's models alone
(about 7 B parameters without LLaVA) do not fit the 24 GiB CI machine. Inputs are small (INPUT_SIZE) and every
sampler takes one step: the point is sizes, layouts, detection and memory, not pictures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_harness import ComfyServer, comfyui_dir, execution_error, make_base_dir
from workflow_tools import load_workflow

# the first test also builds the files (minutes on a cold cache); each workflow takes minutes on 2 cores
pytestmark = [pytest.mark.realsize, pytest.mark.timeout(2700)]

INPUT_SIZE = (192, 128)  # width, height: a landscape photo, so a swapped width and height shows
SERVER_ARGS = ("--bf16-unet", "--bf16-text-enc", "--cache-none")
TIMEOUT = 1800
# What the stock loaders must report in the server log, per workflow.
DETECTED = {
    "diffbody_public": ("model_type EPS", "Requested to load SDXLClipModel", "Requested to load SDXL\n",
                        "Requested to load ControlNet", "Requested to load CLIPVisionModelProjection"),
    "diffbody_full": ("Requested to load SD2ClipModel", "Requested to load SDXLClipModel", "Requested to load SDXL\n",
                      "Requested to load CLIPVisionModelProjection"),
    "diffbody_priors": ("Requested to load SD2ClipModel",),
}
# SaveImage / PreviewImage nodes of each workflow whose images have the input's size.
FULL_SIZE_OUTPUTS = {"diffbody_public": ("15", "16", "42"), "diffbody_full": ("15", "16", "17", "42"),
                     "diffbody_priors": ("6", "7", "15", "16", "17")}


# `python -m comfyui_diffbody ARGS` that prints its own peak RSS (KiB) to stderr as it exits
PEAK_RSS_WRAPPER = (
    "import resource, runpy, sys\n"
    "sys.argv[0] = 'comfyui_diffbody'\n"
    "try:\n    runpy.run_module('comfyui_diffbody', run_name='__main__', alter_sys=True)\n"
    "finally:\n    print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")


@pytest.fixture(scope="session")
def realsize_models_dir() -> Path:
    given = os.environ.get("DIFFBODY_REALSIZE_MODELS_DIR")
    if given:
        return Path(given)
    cache = os.environ.get("DIFFBODY_REALSIZE_CACHE") or os.path.expanduser("~/.cache/comfyui-diffbody/realsize")
    built = subprocess.run([sys.executable, "-m", "comfyui_diffbody.testing.realsize", cache, str(comfyui_dir())],
                           stdout=subprocess.PIPE, text=True, check=True)
    return Path(built.stdout.strip().splitlines()[-1])


def realsize_prompt(name: str) -> dict:
    """The bundled API workflow, unchanged but for the input, one step per sampler and short captions."""
    prompt = load_workflow(f"{name}_api.json")
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "LoadImage":
            inputs["image"] = "realsize_person.png"
        for key, value in (("steps", 1), ("marigold_steps", 1), ("max_new_tokens", 8)):
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = value
    return prompt


def report_run(report_figure, name: str, prompt: dict, seconds: dict, peak: float, log: str) -> None:
    """The figures of one workflow run (also when it failed): peak RSS, each node's time, what the stock loaders
    reported in the server log."""
    report_figure(f"[realsize] {name}: peak RSS {peak:.1f} GiB, {sum(seconds.values()):.0f} s in nodes")
    for node_id, took in sorted(seconds.items(), key=lambda item: -item[1]):
        if took >= 0.5:
            report_figure(f"[realsize]   {prompt[node_id]['class_type']:<36} #{node_id:<4} {took:7.1f} s")
    detected = sorted(set(re.findall(r"^(?:model_type \w+|model weight dtype .*|Requested to load \w+)$", log, re.M)))
    report_figure(f"[realsize]   the stock loaders reported: {'; '.join(detected)}")


@pytest.mark.parametrize("name", list(DETECTED))
def test_bundled_workflow_runs_at_real_size_through_the_stock_loaders(realsize_models_dir, tmp_path, name,
                                                                     report_figure):
    from skimage import data

    base = make_base_dir(tmp_path / "comfy", "ComfyUI-DiffBody", realsize_models_dir)
    Image.fromarray(data.astronaut()).resize(INPUT_SIZE, Image.BICUBIC).save(base / "input" / "realsize_person.png")
    server = ComfyServer(base, extra_args=SERVER_ARGS).start()
    try:
        entry, seconds = server.run_timed(realsize_prompt(name), timeout=TIMEOUT)
        peak = server.peak_rss_gib()
    finally:
        server.stop()
    log = server.log()
    report_run(report_figure, name, entry["prompt"][2], seconds, peak, log)
    assert entry["status"]["status_str"] == "success", ((execution_error(entry) or {}).get("exception_message"),
                                                         log[-3000:])
    missing = [line for line in DETECTED[name] if line not in log]
    assert not missing, f"the server log does not show {missing}"
    for node_id in FULL_SIZE_OUTPUTS[name]:
        for image in entry["outputs"][node_id]["images"]:
            path = base / image["type"] / image.get("subfolder", "") / image["filename"]
            assert Image.open(path).size == INPUT_SIZE, (node_id, image)
            assert np.asarray(Image.open(path)).std() > 0, f"node {node_id} wrote a flat image"


@pytest.mark.parametrize("mode", ["public", "diffbody"])
def test_command_line_restores_at_real_size_from_the_same_single_files(realsize_models_dir, tmp_path, mode,
                                                                      report_figure):
    """`restore` on the files ComfyUI loads (single-file SDXL and SD 2.1 in checkpoints/), in bf16, one step
    per stage at the photo's own size, in a child process that reports its own peak RSS."""
    import time

    from skimage import data

    photo = tmp_path / "person.png"
    Image.fromarray(data.astronaut()).resize(INPUT_SIZE, Image.BICUBIC).save(photo)
    command = [sys.executable, "-c", PEAK_RSS_WRAPPER, "restore", str(photo), "--out", str(tmp_path / "out"),
               "--models-dir", str(realsize_models_dir), "--mode", mode, "--dtype", "bfloat16",
               "--size-mode", "native", "--stage1-steps", "1", "--stage2-steps", "1", "--save-priors"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT,
                          env=dict(os.environ, DIFFBODY_COMFYUI_DIR=str(comfyui_dir())))
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    peak = float(done.stderr.rsplit("PEAK_RSS_KIB ", 1)[1].split()[0]) / 2 ** 20
    report_figure(f"[realsize] restore --mode {mode}: {took:.0f} s, peak RSS {peak:.1f} GiB")
    outputs = sorted((tmp_path / "out").glob("*.png"))
    assert outputs, done.stdout[-2000:]
    for path in outputs:
        assert Image.open(path).size == INPUT_SIZE, path.name
