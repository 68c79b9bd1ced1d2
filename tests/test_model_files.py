"""Model-file lookup: the missing-file message, and opt-in download tested against a local cache."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

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
    assert not known.sha256  # checked against the SHA-256 prefix in its torchvision-style name
    monkeypatch.setitem(files.KNOWN_FILES, known.filename, dataclasses.replace(known, direct_url=source.as_uri()))
    dest = tmp_path / "models" / "diffbody" / "metrics"
    with pytest.raises(files.WrongModelFile, match="does not match its SHA-256"):  # not the published bytes
        files.download(known.filename, str(dest))
    assert os.listdir(dest) == []  # neither the file nor a partial one
    published = dataclasses.replace(known, direct_url=source.as_uri(), sha256=hashlib.sha256(b"alexnet bytes").hexdigest())
    monkeypatch.setitem(files.KNOWN_FILES, known.filename, published)
    path = files.download(known.filename, str(dest))
    assert path == str(dest / known.filename) and open(path, "rb").read() == b"alexnet bytes"
    assert sorted(os.listdir(dest)) == [known.filename]  # no partial file left beside it
    monkeypatch.setitem(files.KNOWN_FILES, known.filename, dataclasses.replace(known, direct_url=(tmp_path / "gone").as_uri()))
    with pytest.raises(OSError):
        files.download(known.filename, str(tmp_path / "other"))
    assert os.listdir(tmp_path / "other") == []


def _fill_hf_cache(cache, repo_id: str, filename: str, payload: bytes, blob_name: str | None = None) -> Path:
    """A Hugging Face hub cache as huggingface_hub lays it out (the snapshot's file a link to blobs/<its SHA-256>,
    as for files in Git LFS), so a download resolves offline. Returns the blob."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    revision = "0" * 40
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    snapshot = repo_dir / "snapshots" / revision
    (snapshot / filename).parent.mkdir(parents=True, exist_ok=True)
    (repo_dir / "blobs").mkdir(exist_ok=True)
    blob = repo_dir / "blobs" / (blob_name or hashlib.sha256(payload).hexdigest())
    blob.write_bytes(payload)
    (snapshot / filename).symlink_to(blob)
    return blob


def _offline_hub(monkeypatch, cache) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)


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


# ---- other packs' folders -------------------------------------------------------------------------------------

def _place(path, payload: bytes = b"") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return str(path)


@pytest.mark.parametrize("pack_name",
                         ["comfyui_controlnet_aux", "comfyui-controlnet-aux", "comfyui_controlnet_aux-main"])
def test_controlnet_aux_checkpoints_are_found_under_their_repo_ids(tmp_path, monkeypatch, pack_name):
    """comfyui_controlnet_aux's layout (its custom_hf_download): ckpts/<repo id>/<file>, for every known pose file."""
    monkeypatch.delenv(files.CONTROLNET_AUX_ENV, raising=False)
    nodes = tmp_path / "custom_nodes"
    ckpts = nodes / pack_name / "ckpts"
    (nodes / pack_name).mkdir(parents=True)  # installed, nothing downloaded yet
    (nodes / "some_other_pack" / "ckpts" / "yzd-v" / "DWPose").mkdir(parents=True)
    assert files.controlnet_aux_ckpts_dirs([str(nodes)]) == [str(ckpts)]
    assert files.controlnet_aux_dirs("diffbody_pose", [str(ckpts)]) == [
        str(ckpts / "yzd-v" / "DWPose"), str(ckpts / "lllyasviel" / "Annotators")]
    assert files.controlnet_aux_dirs("upscale_models", [str(ckpts)]) == []
    models = tmp_path / "models"
    assert files.shared_dirs("diffbody_pose", str(models), [str(nodes)]) == []  # none of them exists yet
    det = _place(ckpts / "yzd-v" / "DWPose" / "yolox_l.onnx")
    body = _place(ckpts / "lllyasviel" / "Annotators" / "body_pose_model.pth")
    assert files.find_file("yolox_l.onnx", files.shared_dirs("diffbody_pose", str(models), [str(nodes)])) == det
    assert files.find_file("body_pose_model.pth", files.shared_dirs("diffbody_pose", str(models), [str(nodes)])) == body


def test_controlnet_aux_config_and_environment_move_its_checkpoints(tmp_path, monkeypatch):
    monkeypatch.delenv(files.CONTROLNET_AUX_ENV, raising=False)
    nodes = tmp_path / "custom_nodes"
    pack = nodes / "comfyui_controlnet_aux"
    pack.mkdir(parents=True)
    (pack / "config.yaml").write_text('annotator_ckpts_path: "./my_ckpts"\nUSE_SYMLINKS: False\n')
    assert files.controlnet_aux_ckpts_dirs([str(nodes)]) == [os.path.join(str(pack), "./my_ckpts")]
    (pack / "config.yaml").write_text(f"annotator_ckpts_path: {tmp_path / 'absolute'}\n")
    assert files.controlnet_aux_ckpts_dirs([str(nodes)]) == [str(tmp_path / "absolute")]
    (pack / "config.yaml").write_text("annotator_ckpts_path: [unclosed\n")  # unreadable: the pack's own ckpts/
    assert files.controlnet_aux_ckpts_dirs([str(nodes)]) == [str(pack / "ckpts")]
    monkeypatch.setenv(files.CONTROLNET_AUX_ENV, str(tmp_path / "from-env"))
    assert files.controlnet_aux_ckpts_dirs([str(nodes)]) == [str(tmp_path / "from-env")]


def test_shared_folders_come_from_folder_paths_and_the_models_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(files.CONTROLNET_AUX_ENV, raising=False)
    models = tmp_path / "models"
    for name in ("dwpose", "depthanything", "diffusers"):
        (models / name).mkdir(parents=True)
    (tmp_path / "yaml-dwpose").mkdir()
    registered = {"dwpose": [str(tmp_path / "yaml-dwpose"), str(models / "dwpose")],
                  "diffusers": [str(tmp_path / "absent")]}
    assert files.shared_dirs("diffbody_pose", str(models), [], registered) == [
        str(tmp_path / "yaml-dwpose"), str(models / "dwpose")]
    assert files.shared_dirs("diffbody_priors", str(models), [], registered) == [
        str(models / "depthanything"), str(models / "diffusers")]
    assert files.shared_dirs("upscale_models", str(models), [], registered) == []
    assert "marigold-normals-v1-1" in files.known_names("diffbody_priors")
    assert "stable-diffusion-xl-base-1.0" not in files.known_names("diffbody_priors")


def test_the_command_line_finds_pose_files_in_controlnet_aux_beside_its_models_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(files.CONTROLNET_AUX_ENV, raising=False)
    monkeypatch.delenv("DIFFBODY_COMFYUI_DIR", raising=False)
    models = tmp_path / "ComfyUI" / "models"
    models.mkdir(parents=True)
    wanted = [("yolox_l.onnx", "diffbody_pose"), ("dw-ll_ucoco_384.onnx", "diffbody_pose")]
    with pytest.raises(files.MissingModelFiles):
        files.resolve_model_files(wanted, models, download_missing=False)
    ckpts = tmp_path / "ComfyUI" / "custom_nodes" / "comfyui_controlnet_aux" / "ckpts" / "yzd-v" / "DWPose"
    det, pose = _place(ckpts / "yolox_l.onnx"), _place(ckpts / "dw-ll_ucoco_384.onnx")
    assert files.resolve_model_files(wanted, models, download_missing=False) == {
        "yolox_l.onnx": det, "dw-ll_ucoco_384.onnx": pose}
    ours = _place(models / "diffbody" / "pose" / "yolox_l.onnx")  # our own folder comes first
    assert files.resolve_model_files(wanted, models, download_missing=False)["yolox_l.onnx"] == ours


SDXL_FILE = "sd_xl_base_1.0.safetensors"


def test_the_catalogue_holds_sdxl_base_sha256():
    assert files.KNOWN_FILES[SDXL_FILE].sha256 == "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"


def test_a_tampered_file_in_the_cache_is_refused_against_the_catalogue(tmp_path, monkeypatch):
    """The catalogue's SHA-256 (a test entry: the real SDXL file is 6.9 GB) decides; a cache blob whose content
    was replaced (its name still the original's hash) never reaches the models folder."""
    good = b"the published weights"
    known = dataclasses.replace(files.KNOWN_FILES[SDXL_FILE], sha256=hashlib.sha256(good).hexdigest())
    monkeypatch.setitem(files.KNOWN_FILES, SDXL_FILE, known)
    cache, dest = tmp_path / "hf-cache", tmp_path / "models" / "checkpoints"
    blob = _fill_hf_cache(cache, known.repo_id, SDXL_FILE, good)
    _offline_hub(monkeypatch, cache)
    assert open(files.download(SDXL_FILE, str(dest)), "rb").read() == good  # the untouched copy passes
    os.remove(dest / SDXL_FILE)
    blob.write_bytes(b"the published weights, with something added")
    with pytest.raises(files.WrongModelFile, match="does not match the SHA256 in the pack's catalogue"):
        files.download(SDXL_FILE, str(dest))
    assert not (dest / SDXL_FILE).exists()


def test_without_a_catalogue_hash_the_cache_record_is_checked(tmp_path, monkeypatch):
    cache, dest = tmp_path / "hf-cache", tmp_path / "models" / "diffbody" / "pose"
    _fill_hf_cache(cache, "yzd-v/DWPose", "yolox_l.onnx", b"tampered onnx",
                   blob_name=hashlib.sha256(b"onnx bytes").hexdigest())
    _offline_hub(monkeypatch, cache)
    with pytest.raises(files.WrongModelFile, match="does not match the SHA256 in the Hugging Face cache's record"):
        files.download("yolox_l.onnx", str(dest))
    assert not (dest / "yolox_l.onnx").exists()


def test_a_tampered_file_of_a_model_folder_is_refused(tmp_path, monkeypatch):
    cache, dest = tmp_path / "hf-cache", tmp_path / "models" / "diffbody" / "priors"
    repo = files.KNOWN_FILES["Depth-Anything-V2-Small-hf"].repo_id
    config = b'{"model_type": "depth_anything"}'
    git_sha1 = hashlib.sha1(b"blob %d\0" % len(config) + config).hexdigest()
    _fill_hf_cache(cache, repo, "config.json", config, blob_name=git_sha1)
    _fill_hf_cache(cache, repo, "model.safetensors", b"weights, altered",
                   blob_name=hashlib.sha256(b"weights").hexdigest())
    _offline_hub(monkeypatch, cache)
    with pytest.raises(files.WrongModelFile, match="model.safetensors"):
        files.download("Depth-Anything-V2-Small-hf", str(dest))
    assert not (dest / "Depth-Anything-V2-Small-hf").exists()
