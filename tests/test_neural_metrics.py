"""models/lpips_network.py, models/no_reference_iqa.py and evaluation/neural.py: LPIPS, CLIPIQA and MUSIQ load
from random-weight files in the real files' key layouts (torchvision's AlexNet and the lpips package's linear
layers; open_clip's CLIP RN50 safetensors; pyiqa's MUSIQ and MANIQA state dicts); without them, or without
their package, each is reported missing with the files' names and sources or the install line; a file of
another layout is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from comfyui_diffbody.evaluation.neural import neural_metrics
from comfyui_diffbody.models.lpips_network import LPIPS_FILES, load_lpips
from comfyui_diffbody.evaluation.scoring import Scorer
from comfyui_diffbody.models.errors import WrongModelFile
from comfyui_diffbody.models.no_reference_iqa import (CLIPIQA_FILE, CLIPIQA_PROMPT_TOKENS, MANIQA_FILE,
                                                      MUSIQ_FILE, load_clipiqa, load_maniqa, load_musiq)

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
    assert "lpips" in metrics and {"maniqa", "clipiqa", "musiq", "identity"} <= set(unavailable)
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


def required(module: str):
    """The test requirement `module` (requirements-dev.txt): skipped where it is not installed, failing in CI."""
    if os.environ.get("CI"):
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module)


def write_clipiqa_file(models_dir: Path, seed: int = 0) -> Path:
    """open_clip's CLIP with the ResNet tower, random weights, saved with safetensors as
    timm/resnet50_clip.openai's open_clip_model.safetensors is: the same key layout as RN50, narrower and
    shallower so that the file is small (the loader reads the sizes from the file, as piq's build_model does)."""
    open_clip_model = required("open_clip.model")
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    network = open_clip_model.CLIP(64, open_clip_model.CLIPVisionCfg(layers=(1, 1, 1, 1), width=64, image_size=64),
                                   open_clip_model.CLIPTextCfg(width=64, heads=1, layers=1))
    path = models_dir / "diffbody" / "metrics" / CLIPIQA_FILE[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    return path


def write_musiq_file(models_dir: Path, seed: int = 0) -> Path:
    """pyiqa's MUSIQ (KonIQ-10k head) with random weights, its state dict saved with torch.save as pyiqa's file."""
    musiq_arch = required("pyiqa.archs.musiq_arch")
    torch.manual_seed(seed)
    path = models_dir / "diffbody" / "metrics" / MUSIQ_FILE[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(musiq_arch.MUSIQ(pretrained=False).state_dict(), path)
    return path


def test_clipiqa_prompt_tokens_are_clips_tokens_of_piqs_prompts():
    open_clip = required("open_clip")
    tokens = open_clip.tokenize(["Good photo.", "Bad photo."])  # OpenAI's BPE, bundled with open_clip
    for row, ids in zip(tokens, CLIPIQA_PROMPT_TOKENS):
        assert row[:len(ids)].tolist() == list(ids) and not row[len(ids):].any()


def test_clipiqa_scores_as_piqs_own_clipiqa_given_the_same_weights(tmp_path, monkeypatch):
    piq = required("piq")
    open_clip = required("open_clip")
    path = write_clipiqa_file(tmp_path)
    ours = load_clipiqa(str(path))
    batch = torch.rand(3, 3, 96, 80)
    scores = ours(batch)
    assert scores.shape == (3, 1) and torch.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()

    # independently: piq's own constructor, its two downloads answered from the same weights and open_clip's tokenizer
    from piq.feature_extractors import clip
    from safetensors.torch import load_file

    monkeypatch.setattr(clip, "load", lambda: clip.build_model(load_file(str(path))).float().eval())
    monkeypatch.setattr(piq.clip_iqa, "download_tensor",
                        lambda url, root: open_clip.tokenize(["Good photo.", "Bad photo."]))
    torch.testing.assert_close(scores, piq.CLIPIQA()(batch))


def test_musiq_loads_pyiqas_layout_and_scores_a_batch(tmp_path):
    path = write_musiq_file(tmp_path)
    network = load_musiq(str(path))
    with torch.no_grad():
        scores = network(torch.rand(2, 3, 72, 96))
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()
    torch.testing.assert_close(network.state_dict(), torch.load(path, weights_only=True))


def test_the_evaluation_scores_clipiqa_and_musiq_from_their_files(tmp_path):
    write_clipiqa_file(tmp_path)
    write_musiq_file(tmp_path)
    metrics, unavailable = neural_metrics(tmp_path, download=False, device="cpu")
    assert {"clipiqa", "musiq"} <= set(metrics) and "no weights" in unavailable["maniqa"]
    assert all(metric.network is None for metric in metrics.values())  # loaded on first use
    results = torch.rand(2, 3, 64, 64)
    [first, second] = Scorer(metrics, unavailable).score(results, results.flip(0))
    for row in (first, second):
        assert isinstance(row["clipiqa"], float) and 0 <= row["clipiqa"] <= 1
        assert isinstance(row["musiq"], float) and row["musiq"] == row["musiq"]  # finite, not NaN
        assert row["maniqa"] == "" and "maniqa" in row["missing"] and "musiq" not in row["missing"]
    assert first["clipiqa"] != second["clipiqa"]  # each image its own score


def test_without_their_files_the_no_reference_metrics_are_missing_with_the_clear_message(tmp_path, capsys):
    required("piq")
    required("pyiqa")
    required("timm")
    metrics, unavailable = neural_metrics(tmp_path, download=False, device="cpu")
    assert not {"maniqa", "clipiqa", "musiq"} & set(metrics)
    assert unavailable["maniqa"] == f"no weights ({MANIQA_FILE[0]} in diffbody/metrics/)"
    assert unavailable["clipiqa"] == f"no weights ({CLIPIQA_FILE[0]} in diffbody/metrics/)"
    assert unavailable["musiq"] == f"no weights ({MUSIQ_FILE[0]} in diffbody/metrics/)"
    message = capsys.readouterr().err
    for name in (MANIQA_FILE[0], CLIPIQA_FILE[0], MUSIQ_FILE[0]):
        assert f"'{name}' was not found" in message
    assert str(tmp_path / "diffbody" / "metrics") in message
    assert "https://huggingface.co/timm/resnet50_clip.openai/resolve/main/open_clip_model.safetensors" in message
    for name in (MANIQA_FILE[0], MUSIQ_FILE[0]):
        assert f"https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/{name}" in message
    [row] = Scorer(metrics, unavailable).score(torch.rand(1, 3, 32, 32), None)
    assert row["maniqa"] == row["clipiqa"] == row["musiq"] == ""  # missing, never 0
    assert all(f"{name}: no weights" in row["missing"] for name in ("maniqa", "clipiqa", "musiq"))


def test_without_its_package_a_metric_is_missing_with_the_install_line(tmp_path, monkeypatch):
    import importlib.util

    write_clipiqa_file(tmp_path)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("piq", "timm") else find_spec(name, *a))
    metrics, unavailable = neural_metrics(tmp_path, download=False, device="cpu")
    assert "clipiqa" not in metrics and unavailable["clipiqa"] == "needs piq (pip install piq)"
    assert unavailable["maniqa"] == "needs timm (pip install timm; pip install --no-deps pyiqa)"


@pytest.mark.parametrize("damage, message", [
    ("vit_clip", "not a ResNet CLIP"),
    ("drop_text_projection", "CLIP RN50's keys"),
])
def test_clip_files_of_another_layout_are_refused(tmp_path, damage, message):
    from safetensors.torch import load_file, save_file

    path = write_clipiqa_file(tmp_path)
    state = load_file(str(path))
    if damage == "vit_clip":
        state["visual.proj"] = torch.zeros(64, 64)
    else:
        del state["text_projection"]
    save_file(state, str(path))
    with pytest.raises(WrongModelFile, match=message):
        load_clipiqa(str(path))


def test_a_musiq_file_of_another_head_is_refused(tmp_path):
    musiq_arch = required("pyiqa.archs.musiq_arch")
    path = tmp_path / MUSIQ_FILE[0]
    torch.save(musiq_arch.MUSIQ(pretrained=False, num_class=10).state_dict(), path)  # AVA's 10-bin head
    with pytest.raises(WrongModelFile, match="2 missing tensor.*head.weight"):
        load_musiq(str(path))


def random_maniqa():
    """pyiqa's MANIQA (KonIQ-10k settings) with random weights; its ViT built by timm without ImageNet weights."""
    maniqa_arch = required("pyiqa.archs.maniqa_arch")
    timm = required("timm")
    from unittest import mock

    create_model = timm.create_model
    with mock.patch.object(maniqa_arch, "timm", mock.Mock(
            create_model=lambda name, **options: create_model(name, **{**options, "pretrained": False}))):
        return maniqa_arch.MANIQA(train_dataset="koniq", scale=0.8, pretrained=False)


def test_maniqa_loads_pyiqas_layout_without_a_download_and_scores_a_batch(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / MANIQA_FILE[0]
    torch.save(random_maniqa().state_dict(), path)  # the whole network, ViT-B/8 included, as pyiqa's file
    network = load_maniqa(str(path))  # the network guard (conftest) fails any download attempt
    torch.testing.assert_close(network.state_dict(), torch.load(path, weights_only=True))
    assert network.test_sample == 20 and not network.training
    network.test_sample = 1  # 20 ViT-B/8 crops per image take minutes on a CI CPU; one shows the plumbing
    with torch.no_grad():
        scores = network(torch.rand(2, 3, 230, 240))
    assert scores.shape == (2, 1) and torch.isfinite(scores).all() and (scores >= 0).all()
    assert scores[0] != scores[1]


def test_a_maniqa_file_without_its_vit_is_refused(tmp_path):
    path = tmp_path / MANIQA_FILE[0]
    torch.save({k: v for k, v in random_maniqa().state_dict().items() if not k.startswith("vit.blocks.11.")}, path)
    with pytest.raises(WrongModelFile, match="missing tensor.*vit.blocks.11"):
        load_maniqa(str(path))
