"""DiffBIR's SwinIR cleaner (stage 0): loading the real file layouts safely, and the tiled cleanup.

Runs on the CPU with a tiny SwinIR in DiffBIR's layout. Its x8 upsampler keeps DiffBIR's 64
channels, so each 512x512 tile still costs about a second on 2 cores: the tests keep tile counts low.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from comfyui_diffbody.models.devices import bf16_usable, default_dtype
from comfyui_diffbody.models.errors import MissingModelFile, WrongModelFile
from comfyui_diffbody.models.swinir import load_swinir
from comfyui_diffbody.pipelines.cleanup import clean_images, output_size, working_size
from comfyui_diffbody.testing.tiny.swinir import (
    TINY_CONFIG,
    build_diffbir_swinir,
    write_tiny_swinir,
)


@pytest.fixture(scope="module")
def tiny_v1(tmp_path_factory) -> str:
    return write_tiny_swinir(str(tmp_path_factory.mktemp("swinir") / "general_swinir_v1.ckpt"), seed=3)


@pytest.fixture(scope="module")
def model(tiny_v1):
    return load_swinir(tiny_v1)


def smooth_image(height: int, width: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A photo-like test image: smooth colour regions plus fine grain, in 0..1."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(2, height // 32), max(2, width // 32), generator=generator)
    image = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return (image + 0.1 * torch.rand(image.shape, generator=generator)).clamp(0, 1)


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("layout,filename", [
    ("diffbir_v1", "general_swinir_v1.ckpt"),
    ("diffbir_v2", "realesrgan_s4_swinir_100k.pth"),
    ("safetensors", "general_swinir_v1.safetensors"),
])
def test_every_layout_loads_the_same_weights(tmp_path, layout, filename):
    path = write_tiny_swinir(str(tmp_path / filename), layout=layout, seed=5)
    descriptor = load_swinir(path)

    assert descriptor.architecture.id == "SwinIR"
    assert descriptor.scale == 1 and "8unshuf" in descriptor.tags
    assert descriptor.size_requirements.multiple_of == 64
    assert not descriptor.model.training and descriptor.device == torch.device("cpu")
    reference = build_diffbir_swinir(TINY_CONFIG, seed=5).state_dict()
    loaded = descriptor.model.state_dict()
    assert set(loaded) == set(reference)
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_tiny_files_have_diffbirs_key_layouts(tmp_path):
    v1 = torch.load(write_tiny_swinir(str(tmp_path / "v1.ckpt"), layout="diffbir_v1"), weights_only=True)
    v2 = torch.load(write_tiny_swinir(str(tmp_path / "v2.pth"), layout="diffbir_v2"), weights_only=True)

    assert list(v1) == ["state_dict"]
    assert all(k.startswith("module.") for k in v1["state_dict"])
    assert "module.conv_first.1.weight" in v1["state_dict"]
    assert "conv_first.1.weight" in v2 and "conv_first.weight" not in v2
    assert {"conv_up1.weight", "conv_up2.weight", "conv_up3.weight", "conv_hr.weight"} <= set(v2)
    # 3 colour channels x 8x8 unshuffle into conv_first
    assert v2["conv_first.1.weight"].shape[1] == 3 * 64


def test_garbage_file_is_a_wrong_model_file_naming_it(tmp_path):
    path = tmp_path / "general_swinir_v1.ckpt"
    path.write_bytes(os.urandom(4096))

    with pytest.raises(WrongModelFile, match="general_swinir_v1.ckpt") as error:
        load_swinir(str(path))
    assert "SwinIR" in str(error.value) and "8x pixel-unshuffle" in str(error.value)


def test_plain_esrgan_upscaler_is_refused_by_name(tmp_path):
    from spandrel.architectures.ESRGAN import ESRGAN

    path = str(tmp_path / "4x_some_upscaler.pth")
    torch.save(ESRGAN(num_filters=8, num_blocks=1, scale=4).state_dict(), path)

    with pytest.raises(WrongModelFile, match="4x_some_upscaler.pth") as error:
        load_swinir(path)
    message = str(error.value)
    assert "ESRGAN" in message and "not a SwinIR" in message and "DiffBIR's SwinIR cleaner" in message


def test_a_classic_swinir_upscaler_is_not_diffbirs_cleaner(tmp_path):
    from spandrel.architectures.SwinIR import SwinIR

    path = str(tmp_path / "swinir_x2.pth")
    torch.save(SwinIR(embed_dim=16, depths=[2], num_heads=[2], window_size=8, upscale=2,
                      upsampler="pixelshuffle").state_dict(), path)

    with pytest.raises(WrongModelFile, match="not DiffBIR's cleaner") as error:
        load_swinir(path)
    assert "swinir_x2.pth" in str(error.value) and "unshuffle 1x" in str(error.value)


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickles_with_code_are_refused_without_running_it(tmp_path):
    path = str(tmp_path / "general_swinir_v1.ckpt")
    with open(path, "wb") as f:
        torch.save({"state_dict": {}, "payload": _RunsCodeWhenUnpickled()}, f, pickle_module=pickle)

    with pytest.raises(WrongModelFile, match="could not be read"):
        load_swinir(path)


def test_missing_file_is_reported_as_missing(tmp_path):
    with pytest.raises(MissingModelFile, match="nowhere.ckpt"):
        load_swinir(str(tmp_path / "nowhere.ckpt"))


def test_no_bf16_on_the_cpu():
    assert bf16_usable("cpu") is False
    assert default_dtype("cpu") == torch.float32


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize("size,upscale,expected", [
    ((9, 17), 1.0, (9, 17)),
    ((9, 17), 2.0, (18, 34)),
    ((9, 17), 4.0, (36, 68)),
    ((333, 250), 1.5, (500, 375)),  # 499.5 rounds to even, as Python's round does
    ((3, 3), 0.1, (1, 1)),
])
def test_output_size_is_what_was_asked_for(size, upscale, expected):
    assert output_size(*size, upscale) == expected


@pytest.mark.parametrize("size,expected", [
    ((9, 17), (512, 967)),  # short side raised to 512, as DiffBIR does
    ((600, 512), (600, 512)),  # already large enough
    ((1024, 300), (1748, 512)),
    ((64, 8000), (64, 8000)),  # long side already past 4096: a thin strip is not stretched
    ((64, 2048), (128, 4096)),  # raised only until the long side reaches 4096
])
def test_working_size(size, expected):
    assert working_size(*size) == expected


def test_tiny_odd_image_comes_back_at_its_size(model):
    image = smooth_image(17, 9)
    out = clean_images(model, image, tile_size=1024)  # one 967x512 tile

    assert out.shape == (1, 3, 17, 9) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert 0 <= out.min() and out.max() <= 1
    # the network really ran: the cleaned image is not a resampled copy of the input
    assert (out - image).abs().mean() > 0.01


def test_upscaled_non_square_output_size(model):
    out = clean_images(model, smooth_image(30, 21), upscale=4.0, tile_size=1024)  # works at 731x512
    assert out.shape == (1, 3, 120, 84)


def test_single_tile_is_exactly_the_network(model):
    image = smooth_image(512, 512)
    with torch.inference_mode():
        direct = model(image)
    assert torch.equal(clean_images(model, image), direct)


def test_very_thin_long_image(model):
    calls = []
    out = clean_images(model, smooth_image(64, 8000), progress=lambda done, total: calls.append(total))
    assert out.shape == (1, 3, 64, 8000)
    assert calls == [31] * 31  # 64 px tall tiles along the strip, not a 64000x512 blow-up


# ---------------------------------------------------------------- tiling, batches, progress


def test_tiled_equals_untiled_away_from_tile_borders(model):
    image = smooth_image(1024, 1536)
    calls = []
    tiled = clean_images(model, image, tile_size=512, tile_stride=256,
                         progress=lambda done, total: calls.append((done, total)))
    untiled = clean_images(model, image, tile_size=1536)

    assert calls == [(i, 15) for i in range(1, 16)]  # 3 rows x 5 columns of 512 px tiles
    # Tile borders carry ~4e-6 of a tile centre's weight, so with this small network the blend matches
    # the untiled run everywhere, not only in tile interiors; a misplaced tile would differ by ~0.05.
    assert (tiled - untiled).abs().max() < 1e-4
    assert untiled.std() > 0.03  # a flat output would make the comparison meaningless


def test_batches_are_processed_image_by_image_with_batch_wide_progress(model):
    images = torch.cat([smooth_image(40, 48, seed=1), smooth_image(40, 48, seed=2)])
    calls = []
    out = clean_images(model, images, tile_size=1024, progress=lambda done, total: calls.append((done, total)))
    second_alone = clean_images(model, images[1:], tile_size=1024)

    assert out.shape == (2, 3, 40, 48)
    assert calls == [(1, 2), (2, 2)]  # each image works at 512x614: one tile each
    assert torch.equal(out[1:], second_alone)
    assert (out[0] - out[1]).abs().mean() > 1e-3


def test_an_exception_in_progress_cancels(model):
    calls = []

    def cancel(done, total):
        calls.append((done, total))
        raise InterruptedError("cancelled by the user")

    with pytest.raises(InterruptedError, match="cancelled"):
        clean_images(model, smooth_image(48, 72, batch=2), progress=cancel)
    assert calls == [(1, 4)]
    assert model.device == torch.device("cpu")


def test_fp16_and_bad_tiles_are_refused(model):
    image = smooth_image(32, 32)
    with pytest.raises(ValueError, match="float16"):
        clean_images(model, image, dtype=torch.float16)
    with pytest.raises(ValueError, match="multiple of 64"):
        clean_images(model, image, tile_size=500)
    with pytest.raises(ValueError, match="tile_stride"):
        clean_images(model, image, tile_stride=0)
    with pytest.raises(ValueError, match="upscale"):
        clean_images(model, image, upscale=0)
