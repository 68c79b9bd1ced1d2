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
        # Hugging Face, or (torchvision's AlexNet for LPIPS) PyTorch's own download server
        assert (known.url.startswith("https://huggingface.co/") or not known.downloadable
                or known.direct_url.startswith("https://download.pytorch.org/models/")), known


def test_a_file_with_a_direct_address_is_downloaded_whole_under_its_name(tmp_path, monkeypatch):
    import dataclasses

    source = tmp_path / "published.pth"
    source.write_bytes(b"alexnet bytes")
    known = files.KNOWN_FILES["alexnet-owt-7be5be79.pth"]
    monkeypatch.setitem(files.KNOWN_FILES, known.filename, dataclasses.replace(known, direct_url=source.as_uri()))
    dest = tmp_path / "models" / "diffbody" / "metrics"
    path = files.download(known.filename, str(dest))
    assert path == str(dest / known.filename) and open(path, "rb").read() == b"alexnet bytes"
    assert sorted(os.listdir(dest)) == [known.filename]  # no partial file left beside it
    monkeypatch.setitem(files.KNOWN_FILES, known.filename, dataclasses.replace(known, direct_url=(tmp_path / "gone").as_uri()))
    with pytest.raises(OSError):
        files.download(known.filename, str(tmp_path / "other"))
    assert os.listdir(tmp_path / "other") == []


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


SDXL = files.Alternatives((("stable-diffusion-xl-base-1.0", "diffusers"), ("sd_xl_base_1.0.safetensors", "checkpoints")))


def test_the_single_file_is_taken_when_the_diffusers_folder_is_absent(tmp_path):
    single = tmp_path / "checkpoints" / "sd_xl_base_1.0.safetensors"
    single.parent.mkdir()
    single.write_bytes(b"")
    found = files.resolve_model_files([SDXL], tmp_path, download_missing=False)
    assert found == {"stable-diffusion-xl-base-1.0": str(single)}
    folder = tmp_path / "diffusers" / "stable-diffusion-xl-base-1.0"
    folder.mkdir(parents=True)  # the diffusers folder keeps working, and comes first
    assert files.resolve_model_files([SDXL], tmp_path, download_missing=False) == {SDXL.name: str(folder)}


def test_a_model_in_neither_form_names_both_and_where_to_get_them(tmp_path):
    with pytest.raises(files.MissingModelFiles) as error:
        files.resolve_model_files([SDXL, ("yolox_l.onnx", "diffbody_pose")], tmp_path, download_missing=False)
    message = str(error.value)
    assert "Missing model files (2)" in message
    for name, folder in SDXL.options:
        assert f"'{name}' in {tmp_path / folder}" in message
    assert "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0\n" in message  # the folder
    assert "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors" \
        in message


def test_clip_tokenizer_files_are_found_in_the_comfyui_the_pack_sits_in(tmp_path, monkeypatch):
    comfy = tmp_path / "ComfyUI"
    monkeypatch.setattr(files, "PACK_ROOT", comfy / "custom_nodes" / "ComfyUI-DiffBody")
    monkeypatch.setenv("DIFFBODY_COMFYUI_DIR", str(tmp_path / "other-ComfyUI"))
    models = tmp_path / "models"
    searched = files.clip_tokenizer_dirs(models)
    assert searched[:2] == [str(comfy / "comfy" / "sd1_tokenizer"), str(tmp_path / "other-ComfyUI" / "comfy" / "sd1_tokenizer")]
    assert searched[2:] == [str(models / "diffusers" / name / "tokenizer")
                            for name in ("stable-diffusion-xl-base-1.0", "stable-diffusion-2-1-base")]
    assert files.find_clip_tokenizer(searched) is None
    for directory in (searched[1], searched[3]):
        os.makedirs(directory)
        for name in files.CLIP_TOKENIZER_FILES:
            open(os.path.join(directory, name), "w").close()
    assert files.find_clip_tokenizer(searched) == searched[1]
    monkeypatch.delenv("DIFFBODY_COMFYUI_DIR")
    assert files.find_clip_tokenizer(files.clip_tokenizer_dirs(models)) == searched[3]
    os.makedirs(searched[0])
    open(os.path.join(searched[0], "vocab.json"), "w").close()  # merges.txt missing: not a tokenizer folder
    assert files.find_clip_tokenizer(files.clip_tokenizer_dirs(models)) == searched[3]
