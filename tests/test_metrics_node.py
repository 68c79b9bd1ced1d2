"""DiffBody Image Metrics (nodes/metrics.py), called as ComfyUI calls it: IMAGE (B, H, W, C) in, FLOATs and a
STRING out; the values are pipelines/metrics.py's and LPIPS's (random-weight files in the real layouts)."""

from __future__ import annotations

import math

import pytest
import torch

from comfyui_diffbody.models.errors import MissingModelFile
from comfyui_diffbody.models.lpips_network import LPIPS_FILES, load_lpips
from comfyui_diffbody.nodes import glue
from comfyui_diffbody.nodes import metrics as node_module
from comfyui_diffbody.pipelines.metrics import pixel_metrics
from test_neural_metrics import write_lpips_files

pytest.importorskip("lpips")


@pytest.fixture
def node(tmp_path, monkeypatch):
    """The node outside ComfyUI: the CPU as its device, tmp_path/diffbody/metrics as its models folder."""
    monkeypatch.setattr(glue, "torch_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(glue, "search_dirs", lambda folder: [str(tmp_path / "diffbody" / "metrics")])
    node_module._LPIPS_CACHE.clear()
    return node_module.ImageMetrics()


def images(batch: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 48, 64, 3, generator=torch.Generator().manual_seed(seed))


def test_the_outputs_are_the_pack_metrics_means_over_the_batch(node, tmp_path):
    files = write_lpips_files(tmp_path)
    result, reference = images(2, 0), images(2, 1)
    psnr, ssim, lpips, cpsnr, cssim, line = node.measure(result, 0, True, False, reference=reference)
    expected = pixel_metrics(result.permute(0, 3, 1, 2), reference.permute(0, 3, 1, 2))
    assert (psnr, ssim, cpsnr, cssim) == pytest.approx(
        [expected[name].mean().item() for name in ("psnr", "ssim", "cpsnr", "cssim")], abs=1e-9)
    network = load_lpips(str(files["backbone"]), str(files["linear"]))
    with torch.no_grad():
        assert lpips == pytest.approx(network(result.permute(0, 3, 1, 2), reference.permute(0, 3, 1, 2),
                                              normalize=True).mean().item(), abs=1e-6)
    assert line.startswith(f"PSNR {psnr:.2f} dB | SSIM {ssim:.4f} | LPIPS {lpips:.4f}")
    assert "(mean of 2 images)" in line and "\n" not in line


def test_one_reference_for_a_batch_and_a_crop(node, tmp_path):
    write_lpips_files(tmp_path)
    result, reference = images(3, 0), images(1, 1)
    cropped = node.measure(result, 8, False, False, reference=reference)
    expected = pixel_metrics(result.permute(0, 3, 1, 2), reference.permute(0, 3, 1, 2).expand(3, -1, -1, -1), 8)
    assert cropped[0] == pytest.approx(expected["psnr"].mean().item(), abs=1e-9)
    assert math.isnan(cropped[2]) and "LPIPS off" in cropped[5]  # switched off: NaN, never 0


def test_without_a_reference_every_metric_is_nan_and_the_line_says_why(node):
    outputs = node.measure(images(1, 0), 0, True, False)
    assert all(math.isnan(value) for value in outputs[:5])
    assert "no reference" in outputs[5]


def test_a_reference_of_another_size_is_refused(node):
    with pytest.raises(ValueError, match="must have the result's size"):
        node.measure(images(1, 0), 0, False, False, reference=torch.rand(1, 40, 64, 3))


def test_missing_lpips_files_give_the_missing_file_message(node, tmp_path):
    with pytest.raises(MissingModelFile) as error:
        node.measure(images(1, 0), 0, True, False, reference=images(1, 1))
    assert LPIPS_FILES["backbone"][0] in str(error.value) and "auto_download" in str(error.value)
