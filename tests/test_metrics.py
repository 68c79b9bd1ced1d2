"""pipelines/metrics.py against an independent reference: scikit-image's colour conversion and metrics,
put together here by the formulas in metrics.py's docstring (the pack's metrics use no scikit-image).

Real photos (scikit-image's astronaut, coffee, chelsea) under each of the paper's five Table-1 presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import color, data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from comfyui_diffbody.pipelines.metrics import PIXEL_METRICS, pixel_metrics
from comfyui_diffbody.training.degradations import PRESETS, apply_preset

PHOTOS = ("astronaut", "coffee", "chelsea")
TOLERANCE = 1e-4


def photo(name: str) -> np.ndarray:
    image = getattr(data, name)()
    h, w = image.shape[:2]
    return image[:h - h % 4, :w - w % 4]  # the presets' x4 downscale needs multiples of 4 (chelsea: 451 wide)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    return (tensor[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


def degraded(name: str, preset: str) -> tuple[np.ndarray, np.ndarray]:
    """(HQ, the preset's LQ brought back to the HQ's size) as uint8 (H, W, 3)."""
    hq = photo(name)
    lq = apply_preset(preset, to_tensor(hq), torch.Generator().manual_seed(0), resize_back=True)
    return hq, to_uint8(lq)


def reference_metrics(result: np.ndarray, hq: np.ndarray) -> dict[str, float]:
    """The documented definitions, from scikit-image: Y of BT.601 studio range (rgb2ycbcr), PSNR/SSIM with
    peak 255, Gaussian SSIM (sigma 1.5, population covariance); CPSNR/CSSIM over RGB."""
    y_result = color.rgb2ycbcr(result)[..., 0]  # uint8 in -> float Y in 16..235
    y_hq = color.rgb2ycbcr(hq)[..., 0]
    ssim_args = dict(data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    return {
        "psnr": peak_signal_noise_ratio(y_hq, y_result, data_range=255),
        "ssim": structural_similarity(y_hq, y_result, **ssim_args),
        "cpsnr": peak_signal_noise_ratio(hq.astype(np.float64), result.astype(np.float64), data_range=255),
        "cssim": structural_similarity(hq.astype(np.float64), result.astype(np.float64), channel_axis=2, **ssim_args),
    }


@pytest.mark.parametrize("preset", list(PRESETS))
def test_pixel_metrics_equal_scikit_image_on_real_photos(preset):
    for name in PHOTOS:
        hq, result = degraded(name, preset)
        ours = pixel_metrics(to_tensor(result), to_tensor(hq))
        expected = reference_metrics(result, hq)
        for metric in PIXEL_METRICS:
            assert ours[metric].shape == (1,)
            assert abs(ours[metric].item() - expected[metric]) < TOLERANCE, (name, preset, metric)


def test_a_batch_gives_each_image_its_own_scores():
    pairs = [degraded("astronaut", preset) for preset in PRESETS]
    results = torch.cat([to_tensor(result) for _, result in pairs])
    references = torch.cat([to_tensor(hq) for hq, _ in pairs])
    batched = pixel_metrics(results, references)
    for index, (hq, result) in enumerate(pairs):
        expected = reference_metrics(result, hq)
        for metric in PIXEL_METRICS:
            assert abs(batched[metric][index].item() - expected[metric]) < TOLERANCE


def test_the_definitions_are_the_documented_ones_and_not_their_neighbours():
    """Negative cases: Y-channel PSNR is not RGB PSNR, CSSIM is not SSIM, crop_border crops."""
    hq, result = degraded("coffee", "blur2_noise20_sr4_jpeg50")
    ours = pixel_metrics(to_tensor(result), to_tensor(hq))
    expected = reference_metrics(result, hq)
    assert abs(ours["psnr"].item() - expected["cpsnr"]) > 0.1
    assert abs(ours["ssim"].item() - expected["cssim"]) > 1e-3
    cropped = pixel_metrics(to_tensor(result), to_tensor(hq), crop_border=16)
    assert abs(cropped["psnr"].item() - reference_metrics(result[16:-16, 16:-16], hq[16:-16, 16:-16])["psnr"]) < TOLERANCE
    assert abs(cropped["psnr"].item() - ours["psnr"].item()) > 1e-3


def test_identical_images_score_infinite_psnr_and_ssim_one():
    hq = to_tensor(photo("chelsea"))
    scores = pixel_metrics(hq, hq.clone())
    assert scores["psnr"].item() == scores["cpsnr"].item() == float("inf")
    assert scores["ssim"].item() == pytest.approx(1.0, abs=1e-12)
    assert scores["cssim"].item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("result_shape, crop, message", [
    ((1, 3, 64, 60), 0, "differ in size"),
    ((1, 3, 64, 64), 32, "leaves nothing"),
    ((1, 1, 64, 64), 0, "3 colour channels"),
])
def test_bad_inputs_are_refused_with_a_reason(result_shape, crop, message):
    reference = torch.rand(1, 3, 64, 64)
    result = torch.rand(result_shape)
    with pytest.raises(ValueError, match=message):
        pixel_metrics(result, reference, crop_border=crop)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_scores_are_the_cpus():
    hq, result = degraded("astronaut", "noise40_sr4")
    cpu = pixel_metrics(to_tensor(result), to_tensor(hq))
    gpu = pixel_metrics(to_tensor(result).cuda(), to_tensor(hq).cuda())
    for metric in PIXEL_METRICS:
        assert gpu[metric].device.type == "cuda"
        assert abs(gpu[metric].item() - cpu[metric].item()) < 1e-6
