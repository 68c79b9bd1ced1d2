"""models/lpips_network.py and evaluation/neural.py: LPIPS loads from random-weight files in the real files' key layouts (torchvision's
AlexNet, the lpips package's linear layers); without them it is reported missing with the files' names and
sources; a file of another layout is refused; MANIQA, CLIPIQA, MUSIQ are missing with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from comfyui_diffbody.evaluation.neural import neural_metrics
from comfyui_diffbody.models.lpips_network import LPIPS_FILES, load_lpips
from comfyui_diffbody.evaluation.scoring import Scorer
from comfyui_diffbody.models.errors import WrongModelFile

lpips = pytest.importorskip("lpips")  # a test requirement (requirements-dev.txt): skipped only outside CI's env
torchvision = pytest.importorskip("torchvision")


def write_lpips_files(models_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Random weights saved as the real files are: torchvision's whole AlexNet state dict (torch.save), and
    the five linear layers under lpips's keys (non-negative, as trained LPIPS weights are)."""
    torch.manual_seed(seed)
    folder = models_dir / "diffbody" / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    backbone = folder / LPIPS_FILES["backbone"][0]
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), backbone)
    linear = folder / LPIPS_FILES["linear"][0]
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))},
               linear)
    return {"backbone": backbone, "linear": linear}


def test_lpips_loads_the_real_layouts_and_equals_the_lpips_package_given_the_same_weights(tmp_path):
    files = write_lpips_files(tmp_path)
    metrics, unavailable = neural_metrics(tmp_path, download=False, device="cpu")
    assert set(metrics) == {"lpips"} and set(unavailable) == {"maniqa", "clipiqa", "musiq"}
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    ours = metrics["lpips"](x, y)
    assert ours.shape == (2,) and (ours > 0).all()
    assert torch.equal(metrics["lpips"](x, x.clone()), torch.zeros(2))

    # independently: the lpips package's own loading of its linear-layer file, torchvision's AlexNet features
    reference = lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, model_path=str(files["linear"]),
                            verbose=False).eval()
    alexnet = torchvision.models.alexnet(weights=None)
    alexnet.load_state_dict(torch.load(files["backbone"], weights_only=True))
    for index, module in enumerate(alexnet.features):
        for slice_ in (reference.net.slice1, reference.net.slice2, reference.net.slice3, reference.net.slice4,
                       reference.net.slice5):
            if str(index) in slice_._modules:
                slice_._modules[str(index)].load_state_dict(module.state_dict())
    with torch.no_grad():
        expected = reference(x, y, normalize=True).flatten()
    torch.testing.assert_close(ours, expected)


def test_without_the_files_lpips_is_missing_with_the_clear_message(tmp_path, capsys):
    metrics, unavailable = neural_metrics(tmp_path, download=False, device="cpu")
    assert metrics == {}
    assert "no weights" in unavailable["lpips"]
    message = capsys.readouterr().err
    for name, _ in LPIPS_FILES.values():
        assert f"'{name}' was not found" in message
    assert str(tmp_path / "diffbody" / "metrics") in message
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message
    assert "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/LPIPS_v0.1_alex-df73285e.pth" in message
    assert "--download" in message
    [row] = Scorer(metrics, unavailable).score(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    assert row["lpips"] == "" and "lpips" in row["missing"]  # missing, never 0


@pytest.mark.parametrize("damage, message", [
    ("drop_linear", "1 missing tensor"),
    ("vgg_backbone", "wrong shape"),
])
def test_files_of_another_layout_are_refused(tmp_path, damage, message):
    files = write_lpips_files(tmp_path)
    if damage == "drop_linear":
        linear = torch.load(files["linear"], weights_only=True)
        del linear["lin4.model.1.weight"]
        torch.save(linear, files["linear"])
    else:  # VGG-16's features are no AlexNet
        torch.save(torchvision.models.vgg16(weights=None).features.state_dict(), files["backbone"])
        vgg = {f"features.{k}": v for k, v in torch.load(files["backbone"], weights_only=True).items()}
        torch.save(vgg, files["backbone"])
    with pytest.raises(WrongModelFile, match=message):
        load_lpips(str(files["backbone"]), str(files["linear"]))
