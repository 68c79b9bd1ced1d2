"""Degradations: Real-ESRGAN's random pipeline (training) and the paper's five fixed mixtures (evaluation)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_diffbody.training.degradations import (
    PRESETS,
    DegradationError,
    DegradationRound,
    Op,
    RealESRGANConfig,
    RealESRGANDegradation,
    apply_operations,
    apply_preset,
    gaussian_family_kernel,
    sinc_kernel,
)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """A (1, 3, 64, 96) crop of scikit-image's astronaut photo, float in 0..1."""
    from skimage import data

    small = Image.fromarray(data.astronaut()).resize((192, 192), Image.BICUBIC)
    array = np.asarray(small)[16:80, 48:144]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255.0


def assert_valid_image(img: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert tuple(img.shape) == shape
    assert img.dtype == torch.float32
    assert torch.isfinite(img).all()
    assert img.min() >= 0 and img.max() <= 1


def on_8bit_grid(img: torch.Tensor) -> bool:
    return torch.allclose(img * 255, (img * 255).round(), atol=1e-3)


# ------------------------------------------------------------------------------------ Real-ESRGAN


def test_realesrgan_same_seed_same_output_different_seed_different(photo):
    degrade = RealESRGANDegradation()
    batch = photo.repeat(2, 1, 1, 1)
    trace_a, trace_b = [], []
    a = degrade(batch, generator(7), trace=trace_a)
    b = degrade(batch, generator(7), trace=trace_b)
    c = degrade(batch, generator(8))
    assert torch.equal(a, b) and trace_a == trace_b
    assert not torch.equal(a, c)


@pytest.mark.parametrize("seed", range(4))
def test_realesrgan_shape_range_and_8bit_output(photo, seed):
    lq = RealESRGANDegradation(scale=4)(photo.repeat(2, 1, 1, 1), generator(seed))
    assert_valid_image(lq, (2, 3, 16, 24))
    assert on_8bit_grid(lq)


def test_realesrgan_resize_back_returns_hq_size(photo):
    lq_small = RealESRGANDegradation(scale=4)(photo, generator(3))
    lq_back = RealESRGANDegradation(scale=4, resize_back=True)(photo, generator(3))
    assert_valid_image(lq_back, tuple(photo.shape))
    # The same draws: downscaling the upsampled LQ again gives back roughly the LQ.
    again = torch.nn.functional.interpolate(lq_back, size=lq_small.shape[-2:], mode="area")
    assert (again - lq_small).abs().mean() < 0.03


def test_realesrgan_batch_items_are_degraded_independently(photo):
    trace = []
    lq = RealESRGANDegradation()(photo.repeat(3, 1, 1, 1), generator(0), trace=trace)
    assert len(trace) == 3
    assert trace[0] != trace[1] and trace[1] != trace[2]
    assert not torch.equal(lq[0], lq[1]) and not torch.equal(lq[1], lq[2])


def test_realesrgan_trace_follows_the_second_order_structure(photo):
    for seed in range(6):
        trace = []
        RealESRGANDegradation()(photo, generator(seed), trace=trace)
        names = [op.name for op in trace[0]]
        # Round 1 always blurs; round 2 blurs with probability 0.8; the final sinc with 0.8.
        assert names[:4] == ["blur", "resize", "noise", "jpeg"]
        rest = names[4:] if names[4] != "blur" else names[5:]
        assert rest[:2] == ["resize", "noise"]
        final = [n for n in rest[2:] if n != "sinc"]
        assert final in (["resize", "jpeg"], ["jpeg", "resize"])
        qualities = [op.params["quality"] for op in trace[0] if op.name == "jpeg"]
        assert all(30 <= q <= 95 for q in qualities)


def single_kernel_round(kind: str, **overrides) -> DegradationRound:
    probs = tuple(1.0 if k == kind else 0.0 for k in DegradationRound().kernel_types)
    return DegradationRound(kernel_probs=probs, sinc_prob=0.0, **overrides)


@pytest.mark.parametrize(
    "first, expected",
    [
        (single_kernel_round("iso"), ("blur", "type", "iso")),
        (single_kernel_round("aniso"), ("blur", "type", "aniso")),
        (single_kernel_round("generalized_iso"), ("blur", "type", "generalized_iso")),
        (single_kernel_round("generalized_aniso"), ("blur", "type", "generalized_aniso")),
        (single_kernel_round("plateau_iso"), ("blur", "type", "plateau_iso")),
        (single_kernel_round("plateau_aniso"), ("blur", "type", "plateau_aniso")),
        (DegradationRound(sinc_prob=1.0), ("blur", "type", "sinc")),
        (DegradationRound(gaussian_noise_prob=0.0, gray_noise_prob=1.0), ("noise", "type", "poisson")),
        (DegradationRound(gaussian_noise_prob=0.0, gray_noise_prob=0.0), ("noise", "type", "poisson")),
        (DegradationRound(gaussian_noise_prob=1.0, gray_noise_prob=1.0), ("noise", "gray", True)),
    ],
)
def test_realesrgan_every_kernel_and_noise_branch(photo, first, expected):
    trace = []
    lq = RealESRGANDegradation(RealESRGANConfig(first=first))(photo, generator(1), trace=trace)
    assert_valid_image(lq, (1, 3, 16, 24))
    name, key, value = expected
    first_op = next(op for op in trace[0] if op.name == name)
    assert first_op.params[key] == value


def test_realesrgan_libjpeg_backend_is_reproducible(photo):
    degrade = RealESRGANDegradation(RealESRGANConfig(jpeg_backend="libjpeg"))
    a, b = degrade(photo, generator(5)), degrade(photo, generator(5))
    assert torch.equal(a, b)
    assert_valid_image(a, (1, 3, 16, 24))


def test_realesrgan_rejects_sizes_not_divisible_by_scale(photo):
    with pytest.raises(DegradationError, match="multiples of 4"):
        RealESRGANDegradation(scale=4)(photo[..., :62, :], generator(0))


# ------------------------------------------------------------------------------------ kernels


def test_anisotropic_gaussian_kernel_has_the_requested_covariance():
    sigma_x, sigma_y, theta = 3.0, 1.0, math.pi / 6
    kernel = gaussian_family_kernel(31, sigma_x, sigma_y, theta)
    axis = torch.arange(-15, 16, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    measured = torch.tensor(
        [[(kernel * x * x).sum(), (kernel * x * y).sum()], [(kernel * x * y).sum(), (kernel * y * y).sum()]]
    )
    cos, sin = math.cos(theta), math.sin(theta)
    rotation = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    expected = rotation @ torch.diag(torch.tensor([sigma_x**2, sigma_y**2], dtype=torch.float64)) @ rotation.T
    assert torch.allclose(measured, expected, atol=1e-3)
    assert math.isclose(kernel.sum().item(), 1.0, abs_tol=1e-12)


@pytest.mark.parametrize(
    "shape, beta", [("generalized", 0.5), ("generalized", 4.0), ("plateau", 1.0), ("plateau", 2.0)]
)
def test_shaped_kernels_are_normalised_symmetric_and_peak_at_the_centre(shape, beta):
    kernel = gaussian_family_kernel(21, 2.0, 1.0, 0.4, shape, beta)
    assert math.isclose(kernel.sum().item(), 1.0, abs_tol=1e-12)
    assert (kernel >= 0).all() and kernel[10, 10] == kernel.max()
    assert torch.allclose(kernel, kernel.flip(0).flip(1))  # point symmetric: correlation == convolution


def test_sinc_kernel_passes_low_and_stops_high_frequencies():
    kernel = sinc_kernel(21, math.pi / 2)
    assert math.isclose(kernel.sum().item(), 1.0, abs_tol=1e-12)
    response = torch.fft.fft2(kernel, s=(256, 256)).abs()
    pass_band = response[0, int(256 * 0.1 / 2)]  # 0.1 pi
    stop_band = response[0, int(256 * 0.9 / 2)]  # 0.9 pi
    assert pass_band > 0.9 and stop_band < 0.1


# ------------------------------------------------------------------------------------ presets


def test_presets_are_the_five_mixtures_of_table_1():
    blur = Op("blur", {"sigma": 2.0, "kernel_size": 21})
    sr = Op("downscale", {"factor": 4, "mode": "bicubic"})
    jpeg = Op("jpeg", {"quality": 50})
    assert PRESETS == {
        "blur2_sr4": (blur, sr),
        "noise40_sr4": (sr, Op("noise", {"sigma": 40.0})),
        "blur2_noise40": (blur, Op("noise", {"sigma": 40.0})),
        "blur2_noise40_sr4": (blur, sr, Op("noise", {"sigma": 40.0})),
        "blur2_noise20_sr4_jpeg50": (blur, sr, Op("noise", {"sigma": 20.0}), jpeg),
    }


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_applies_exactly_its_operations(photo, name):
    trace = []
    lq = apply_preset(name, photo, generator(0), trace=trace)
    assert trace == list(PRESETS[name])
    order = ["blur", "downscale", "noise", "jpeg"]
    positions = [order.index(op.name) for op in trace]
    assert positions == sorted(positions)
    h, w = photo.shape[-2:]
    expected = (1, 3, h // 4, w // 4) if "sr4" in name else (1, 3, h, w)
    assert_valid_image(lq, expected)
    assert on_8bit_grid(lq)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_resize_back_upsamples_to_the_hq_size(photo, name):
    trace = []
    lq = apply_preset(name, photo, generator(0), resize_back=True, trace=trace)
    assert_valid_image(lq, tuple(photo.shape))
    upsample = [Op("upsample", {"factor": 4, "mode": "bicubic"})] if "sr4" in name else []
    assert trace == list(PRESETS[name]) + upsample


@pytest.mark.parametrize("name", [n for n in PRESETS if "noise" in n])
def test_noisy_presets_depend_on_the_seed_and_only_on_it(photo, name):
    batch = photo.repeat(2, 1, 1, 1)
    a = apply_preset(name, batch, generator(1))
    assert torch.equal(a, apply_preset(name, batch, generator(1)))
    assert not torch.equal(a, apply_preset(name, batch, generator(2)))
    assert not torch.equal(a[0], a[1])  # batch items get their own noise


def test_blur_only_preset_is_deterministic(photo):
    a = apply_preset("blur2_sr4", photo, generator(1))
    assert torch.equal(a, apply_preset("blur2_sr4", photo, generator(2)))


def test_preset_blur_of_an_impulse_is_a_gaussian_of_std_2():
    impulse = torch.zeros(1, 3, 41, 41)
    impulse[..., 20, 20] = 1.0
    blur = [op for op in PRESETS["blur2_noise40"] if op.name == "blur"]
    out = apply_operations(impulse, blur, generator(0), quantize=False)[0, 0].double()
    axis = torch.arange(-20, 21, dtype=torch.float64)
    assert math.isclose(out.sum().item(), 1.0, abs_tol=1e-6)
    assert abs((out.sum(0) * axis).sum().item()) < 1e-6  # centred
    std_x = math.sqrt((out.sum(0) * axis**2).sum().item())
    std_y = math.sqrt((out.sum(1) * axis**2).sum().item())
    assert abs(std_x - 2.0) < 0.01 and abs(std_y - 2.0) < 0.01


@pytest.mark.parametrize("name, size", [("blur2_noise40", 128), ("noise40_sr4", 256)])
def test_preset_noise_sigma_40_is_40_over_255(name, size):
    grey = torch.full((1, 3, size, size), 0.5)
    lq = apply_preset(name, grey, generator(3))
    assert lq.shape[-1] == 128 if name == "blur2_noise40" else 64
    assert abs(lq.mean().item() - 0.5) < 0.005
    assert abs(lq.std().item() - 40 / 255) < 0.03 * 40 / 255


def test_libjpeg_operation_is_pillows_codec(photo):
    out = apply_operations(photo, [Op("jpeg", {"quality": 50})], generator(0), quantize=False)
    pixels = (photo[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=50)
    expected = torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1)[None].float() / 255
    assert torch.equal(out, expected)
    assert (out - photo).abs().mean() > 0.005  # it did compress


def test_kornia_jpeg_is_close_to_libjpeg_on_sizes_off_the_16_grid(photo):
    crop = photo[..., :40, :56]
    ops = [Op("jpeg", {"quality": 50})]
    kornia = apply_operations(crop, ops, generator(0), jpeg_backend="kornia")
    libjpeg = apply_operations(crop, ops, generator(0), jpeg_backend="libjpeg")
    assert kornia.shape == crop.shape
    psnr = lambda a, b: 10 * math.log10(1 / ((a - b) ** 2).mean().item())  # noqa: E731
    assert psnr(kornia, libjpeg) > 35
    assert psnr(kornia, crop) < 45  # it did compress


def test_unknown_preset_and_bad_images_are_refused(photo):
    with pytest.raises(DegradationError, match="unknown degradation preset"):
        apply_preset("blur3", photo, generator(0))
    with pytest.raises(DegradationError, match="multiples of 4"):
        apply_preset("blur2_sr4", photo[..., :63], generator(0))
    with pytest.raises(DegradationError, match="batch, 3, height, width"):
        apply_preset("blur2_sr4", photo[0], generator(0))
