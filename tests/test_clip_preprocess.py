"""The colour adapter's CLIP input: the pack's pipelines/clip_image.py `clip_pixels` (used by the diffusers
pipeline and phase-4 training) against ComfyUI's OWN `comfy.clip_vision.clip_preprocess` (what ComfyUI's
CLIP_VISION.encode_image runs, and what the tests' TinyCLIPVision stand-in now runs), on scikit-image's
astronaut photo at several sizes and aspects, for ViT-H's 224 px and the tiny encoder's 32 px.

ComfyUI runs in a subprocess, so its modules never enter the pytest process. The negative test feeds the
same detector two preprocessing bugs (a stretched instead of centre-cropped resize; BGR instead of RGB)
and checks that it reports them.
"""

from __future__ import annotations


import pytest

TOLERANCE = 1e-6  # the same 8-bit quantised values, normalised: equal up to float rounding

CHECK = r'''
import json, sys
comfy_dir = sys.argv[1]
sys.path.insert(0, comfy_dir)
import numpy as np
import torch
import torch.nn.functional as F
torch.set_num_threads(1)
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
comfy.cli_args.args.cpu = True
from comfy.clip_vision import clip_preprocess
from PIL import Image
from skimage import data
from comfyui_diffbody.pipelines.clip_image import clip_pixels

photo = data.astronaut()
SIZES = [(512, 512), (224, 224), (300, 500), (500, 300), (61, 97), (1024, 640), (333, 250)]  # (height, width)


def image(height, width):
    """IMAGE (1, H, W, 3) in 0..1: the photo resized with PIL (a real photo at that size)."""
    resized = np.asarray(Image.fromarray(photo).resize((width, height), Image.LANCZOS), np.float32) / 255.0
    return torch.from_numpy(resized)[None]


def stretched(images, size):  # a bug: squash to a square instead of a centre crop
    return clip_pixels(F.interpolate(images, size=(size, size), mode="bicubic", antialias=True), size)


def bgr(images, size):  # a bug: the channels reversed
    return clip_pixels(images.flip(1), size)


out = {}
for size in (224, 32):
    for height, width in SIZES:
        bhwc = image(height, width)
        comfy = clip_preprocess(bhwc, size=size).float()
        key = f"{size}:{height}x{width}"
        out[key] = {"shape": list(comfy.shape)}
        for name, pack in (("pack", clip_pixels), ("stretched", stretched), ("bgr", bgr)):
            ours = pack(bhwc.movedim(-1, 1), size)
            out[key][name] = float((ours - comfy).abs().max()) if ours.shape == comfy.shape else None
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    from comfy_harness import run_comfy_script

    return run_comfy_script(CHECK, tmp_path_factory.mktemp("clip_preprocess"),
                            label="max |clip_pixels - clip_preprocess| per case")


def differences(measured: dict, variant: str) -> dict[str, float | None]:
    """The detector: every case where `variant` is not ComfyUI's preprocessing (None: another shape)."""
    return {case: r[variant] for case, r in measured.items() if r[variant] is None or r[variant] > TOLERANCE}


def test_clip_pixels_equals_comfyuis_clip_preprocess_on_real_photos(measured):
    assert len(measured) == 14
    for case, r in measured.items():
        size = int(case.split(":")[0])
        assert r["shape"] == [1, 3, size, size], case
    assert differences(measured, "pack") == {}


def test_the_detector_catches_a_stretched_resize_and_swapped_channels(measured):
    stretched, swapped = differences(measured, "stretched"), differences(measured, "bgr")
    squares = {case for case in measured if case.split(":")[1] in ("512x512", "224x224")}
    assert set(stretched) == set(measured) - squares  # a square photo has nothing to crop
    assert set(swapped) == set(measured)
    assert min(stretched.values()) > 0.05 and min(swapped.values()) > 0.05
