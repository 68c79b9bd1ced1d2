"""Model-file lookup: the missing-file message, and opt-in download tested against a local cache."""

from __future__ import annotations

import os

import pytest

from comfyui_diffbody.models import files


def test_missing_file_message_names_file_folder_and_source(tmp_path):
    target = str(tmp_path / "upscale_models")
    with pytest.raises(files.MissingModelFile) as error:
        files.require_file("general_swinir_v1.ckpt", "upscale_models", [target])
    message = str(error.value)
    assert "general_swinir_v1.ckpt" in message
    assert target in message
    assert "https://huggingface.co/lxq007/DiffBIR/resolve/main/general_swinir_v1.ckpt" in message


def test_unknown_file_message_still_names_file_and_folder(tmp_path):
    with pytest.raises(files.MissingModelFile, match="my_own.ckpt") as error:
        files.require_file("my_own.ckpt", "upscale_models", [str(tmp_path)])
    assert str(tmp_path) in str(error.value)


def test_every_known_file_has_a_registered_folder():
    for known in files.KNOWN_FILES.values():
        assert known.folder in files.FOLDERS, known
        assert known.url.startswith("https://huggingface.co/") or not known.downloadable


def _fill_hf_cache(cache, repo_id: str, filename: str, payload: bytes) -> None:
    """A Hugging Face hub cache as huggingface_hub lays it out, so a download resolves offline."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    revision = "0" * 40
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / filename).write_bytes(payload)


def test_download_places_the_file_in_the_models_folder(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    _fill_hf_cache(cache, "yzd-v/DWPose", "yolox_l.onnx", b"onnx bytes")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    dest = tmp_path / "models" / "diffbody" / "pose"
    path = files.download("yolox_l.onnx", str(dest))
    assert os.path.dirname(os.path.abspath(path)) == str(dest)
    assert open(path, "rb").read() == b"onnx bytes"
