"""Every model file the pack knows: where it lives, where it comes from, and what to say when it is missing.

This module is the single source of truth for file names, model folders and download sources. The
ComfyUI glue (`nodes/glue.py`) registers the folders and resolves names against them; the command
line and the tests resolve against a plain models directory laid out the same way. No ComfyUI, no
torch: importing this is free.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MissingDependency, MissingModelFile, MissingModelFiles, WrongModelFile

PT_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})


@dataclass(frozen=True)
class ModelFolder:
    """A ComfyUI model folder name and its default location below `ComfyUI/models/`."""

    name: str
    relative_dir: str
    extensions: frozenset[str] = PT_EXTENSIONS
    # ComfyUI already defines some folders; we only add a default path for those it may lack.
    comfy_builtin: bool = False
    # Other packs' folders holding files of this kind, searched after ours (see `shared_dirs`): ComfyUI folder
    # names, each also looked for as a sub-folder of ComfyUI/models/. Only the names the catalogue knows are
    # taken from them.
    shared: tuple[str, ...] = ()


# Folders the pack uses. ComfyUI's standard folders are reused wherever a file type already has one.
FOLDERS: dict[str, ModelFolder] = {
    f.name: f
    for f in (
        ModelFolder("diffbody", "diffbody", frozenset({".safetensors"})),
        # models/dwpose: the DWPose folder of several packs (InteractAvatar registers it with folder_paths; others
        # tell users to put yolox_l.onnx and dw-ll_ucoco_384.onnx there). comfyui_controlnet_aux: CONTROLNET_AUX.
        ModelFolder("diffbody_pose", os.path.join("diffbody", "pose"), PT_EXTENSIONS | {".onnx"}, shared=("dwpose",)),
        ModelFolder("upscale_models", "upscale_models", comfy_builtin=True),
        ModelFolder("checkpoints", "checkpoints", comfy_builtin=True),
        ModelFolder("controlnet", "controlnet", comfy_builtin=True),
        ModelFolder("clip_vision", "clip_vision", comfy_builtin=True),
        ModelFolder("ipadapter", "ipadapter"),
        ModelFolder("diffusers", "diffusers", frozenset(), comfy_builtin=True),
        # Hugging Face model folders (one sub-folder per model), shared with other LLM packs.
        ModelFolder("LLM", "LLM", frozenset()),
        # Depth and normal estimators (Hugging Face model folders): the priors without stage-1 weights. Shared:
        # models/depthanything (kijai/ComfyUI-DepthAnythingV2's folder) and core's diffusers folder, where
        # kijai/ComfyUI-Marigold downloads prs-eth/marigold-normals-v1-1 as models/diffusers/marigold-normals-v1-1.
        ModelFolder("diffbody_priors", os.path.join("diffbody", "priors"), frozenset(),
                    shared=("depthanything", "diffusers")),
        # Networks of the evaluation's neural metrics (evaluation/neural.py).
        ModelFolder("diffbody_metrics", os.path.join("diffbody", "metrics")),
        # insightface's model packs, where IP-Adapter FaceID, InstantID and PuLID users keep them (insightface's
        # FaceAnalysis(name=<pack>, root=ComfyUI/models/insightface) reads <root>/models/<pack>/): the evaluation's
        # identity metric (models/face_identity.py).
        ModelFolder("insightface_antelopev2", os.path.join("insightface", "models", "antelopev2"), frozenset({".onnx"})),
        ModelFolder("insightface_buffalo_l", os.path.join("insightface", "models", "buffalo_l"), frozenset({".onnx"})),
    )
}


@dataclass(frozen=True)
class ModelFile:
    """A downloadable model file (or, with `is_dir`, a whole Hugging Face model folder)."""

    filename: str
    folder: str
    repo_id: str
    repo_path: str = ""
    description: str = ""
    is_dir: bool = False
    aliases: tuple[str, ...] = field(default=())
    # A folder whose safetensors live on another branch or pull request than main (e.g. "refs/pr/5").
    revision: str = ""
    # Files of a folder the pack never reads (pickled duplicates of the safetensors): not downloaded.
    skip_patterns: tuple[str, ...] = field(default=())
    # SHA-256 of the published file (a single file; see download() for files and folders without one).
    sha256: str = ""
    # A single file published outside Hugging Face (torchvision's weights): its address.
    direct_url: str = ""
    # A public file the pack does not fetch (published only inside a zip, under a licence to accept): the page
    # the missing-file message sends the user to.
    source_page: str = ""

    @property
    def downloadable(self) -> bool:
        return bool(self.repo_id or self.direct_url)

    @property
    def url(self) -> str:
        if self.direct_url:
            return self.direct_url
        if not self.downloadable:
            return ""
        if self.is_dir:
            tree = f"/tree/{self.revision.replace('/', '%2F')}" if self.revision else ""
            return f"https://huggingface.co/{self.repo_id}{tree}"
        return f"https://huggingface.co/{self.repo_id}/resolve/main/{self.repo_path or self.filename}"


INSIGHTFACE_PACKS = "https://github.com/deepinsight/insightface/tree/master/python-package#model-zoo"
INSIGHTFACE_BUFFALO_L = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"

KNOWN_FILES: dict[str, ModelFile] = {
    f.filename: f
    for f in (
        ModelFile("general_swinir_v1.ckpt", "upscale_models", "lxq007/DiffBIR",
                  description="DiffBIR v1 general SwinIR cleaner (stage 0)"),
        ModelFile("realesrgan_s4_swinir_100k.pth", "upscale_models", "lxq007/DiffBIR-v2",
                  description="DiffBIR v2 SwinIR cleaner trained on Real-ESRGAN degradations (stage 0)"),
        ModelFile("yolox_l.onnx", "diffbody_pose", "yzd-v/DWPose",
                  description="DWPose person detector (YOLOX-L, ONNX)"),
        ModelFile("dw-ll_ucoco_384.onnx", "diffbody_pose", "yzd-v/DWPose",
                  description="DWPose whole-body keypoint model (ONNX)"),
        ModelFile("body_pose_model.pth", "diffbody_pose", "lllyasviel/Annotators",
                  description="OpenPose body model (controlnet_aux)"),
        ModelFile("llava-1.5-7b-hf", "LLM", "llava-hf/llava-1.5-7b-hf", is_dir=True,
                  description="LLaVA 1.5 7B, transformers layout (captioning)"),
        ModelFile("stable-diffusion-2-1-base", "diffusers", "stabilityai/stable-diffusion-2-1-base", is_dir=True,
                  description="SD 2.1-base in diffusers layout (stage 1's VAE and text encoder outside ComfyUI)"),
        ModelFile("v2-1_512-ema-pruned.safetensors", "checkpoints", "stabilityai/stable-diffusion-2-1-base",
                  description="SD 2.1-base single file (stage 1's VAE and CLIP; stage-1 initialisation)"),
        # DiffBody's own weights: no public release (see the README's training section).
        ModelFile("diffbody_stage1_unet.safetensors", "diffbody", "",
                  description="DiffBody stage-1 joint UNet (DiffBody layout)"),
        ModelFile("diffbody_stage1_controlnet.safetensors", "diffbody", "",
                  description="DiffBody stage-1 ControlNet (DiffBody layout)"),
        ModelFile("diffbody_stage2_controlnet.safetensors", "diffbody", "",
                  description="DiffBody stage-2 multi-prior SDXL ControlNet (DiffBody layout)"),
        ModelFile("diffbody_colour_adapter.safetensors", "ipadapter", "",
                  description="DiffBody colour adapter (IP-Adapter Plus XL layout, fine-tuned)"),
        ModelFile("ip-adapter-plus_sdxl_vit-h.safetensors", "ipadapter", "h94/IP-Adapter",
                  "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
                  description="IP-Adapter Plus XL (colour adapter, public-weights mode and initialisation)"),
        ModelFile("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "clip_vision", "h94/IP-Adapter",
                  "models/image_encoder/model.safetensors",
                  description="OpenCLIP ViT-H-14 image encoder for the colour adapter"),
        ModelFile("stable-diffusion-xl-base-1.0", "diffusers", "stabilityai/stable-diffusion-xl-base-1.0", is_dir=True,
                  description="SDXL 1.0 base in diffusers layout (stage 2 outside ComfyUI)"),
        ModelFile("sd_xl_base_1.0.safetensors", "checkpoints", "stabilityai/stable-diffusion-xl-base-1.0",
                  description="SDXL 1.0 base single file (stage 2)",
                  sha256="31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"),
        ModelFile("controlnet-union-sdxl-1.0.safetensors", "controlnet", "xinsir/controlnet-union-sdxl-1.0",
                  "diffusion_pytorch_model_promax.safetensors",
                  description="ControlNet-Union SDXL (public-weights mode stage 2)"),
        # Depth and normal estimators (public-weights mode's depth/normal priors; training-data annotation).
        # Depth Anything V2 Small is Apache-2.0; Base and Large are CC-BY-NC-4.0 (non-commercial).
        ModelFile("Depth-Anything-V2-Large-hf", "diffbody_priors", "depth-anything/Depth-Anything-V2-Large-hf",
                  is_dir=True, description="Depth Anything V2 Large, transformers layout (depth; CC-BY-NC-4.0)"),
        ModelFile("Depth-Anything-V2-Base-hf", "diffbody_priors", "depth-anything/Depth-Anything-V2-Base-hf",
                  is_dir=True, description="Depth Anything V2 Base, transformers layout (depth; CC-BY-NC-4.0)"),
        ModelFile("Depth-Anything-V2-Small-hf", "diffbody_priors", "depth-anything/Depth-Anything-V2-Small-hf",
                  is_dir=True, description="Depth Anything V2 Small, transformers layout (depth; Apache-2.0)"),
        # Its main branch holds pickled weights only; the safetensors conversion sits in pull request 5.
        ModelFile("dpt-hybrid-midas", "diffbody_priors", "Intel/dpt-hybrid-midas", is_dir=True,
                  revision="refs/pr/5", skip_patterns=("*.bin",),
                  description="MiDaS v3 DPT-Hybrid, transformers layout (depth, the paper's MiDaS)"),
        ModelFile("marigold-normals-v1-1", "diffbody_priors", "prs-eth/marigold-normals-v1-1", is_dir=True,
                  skip_patterns=("*.fp16.safetensors",),
                  description="Marigold normals v1.1, diffusers layout (surface normals)"),
        # The evaluation's LPIPS (AlexNet, v0.1): the lpips package's linear layers (pyiqa's copy, the same bytes)
        # on torchvision's ImageNet AlexNet.
        ModelFile("LPIPS_v0.1_alex-df73285e.pth", "diffbody_metrics", "chaofengc/IQA-PyTorch-Weights",
                  description="LPIPS v0.1 linear layers for AlexNet (evaluation)"),
        ModelFile("alexnet-owt-7be5be79.pth", "diffbody_metrics", "",
                  direct_url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                  description="torchvision's ImageNet AlexNet, LPIPS's backbone (evaluation)"),
        # The evaluation's CLIPIQA (piq's, models/no_reference_iqa.py): OpenAI's CLIP RN50 as open_clip's
        # safetensors (408 MB), saved under a name that says which CLIP it is.
        ModelFile("resnet50_clip.openai.safetensors", "diffbody_metrics", "timm/resnet50_clip.openai",
                  repo_path="open_clip_model.safetensors",
                  description="OpenAI CLIP RN50, CLIPIQA's network (evaluation)"),
        # The evaluation's MANIQA (pyiqa's default "maniqa", trained on KonIQ-10k): the whole network, ViT included.
        ModelFile("ckpt_koniq10k.pt", "diffbody_metrics", "chaofengc/IQA-PyTorch-Weights",
                  description="MANIQA trained on KonIQ-10k (evaluation)"),
        # The evaluation's MUSIQ (pyiqa's default "musiq", trained on KonIQ-10k).
        ModelFile("musiq_koniq_ckpt-e95806b9.pth", "diffbody_metrics", "chaofengc/IQA-PyTorch-Weights",
                  description="MUSIQ trained on KonIQ-10k (evaluation)"),
        # The identity metric's face detector and recognition network: insightface's packs, published only as zips
        # (buffalo_l.zip in the v0.7 GitHub release; antelopev2 on Google Drive, insightface's Model Zoo table) for
        # non-commercial research only, so never downloaded by the pack. The two detectors are one file (one SHA-256).
        ModelFile("scrfd_10g_bnkps.onnx", "insightface_antelopev2", "", source_page=INSIGHTFACE_PACKS,
                  description="insightface antelopev2 face detector (SCRFD-10G, 5 keypoints; identity metric)"),
        ModelFile("glintr100.onnx", "insightface_antelopev2", "", source_page=INSIGHTFACE_PACKS,
                  description="insightface antelopev2 face recognition (ArcFace R100, Glint360K; identity metric)"),
        ModelFile("det_10g.onnx", "insightface_buffalo_l", "", source_page=INSIGHTFACE_BUFFALO_L,
                  description="insightface buffalo_l face detector (SCRFD-10G, 5 keypoints; identity metric)"),
        ModelFile("w600k_r50.onnx", "insightface_buffalo_l", "", source_page=INSIGHTFACE_BUFFALO_L,
                  description="insightface buffalo_l face recognition (ArcFace R50, WebFace600K; identity metric)"),
    )
}


def default_dir(models_dir: str, folder: str) -> str:
    return os.path.join(models_dir, FOLDERS[folder].relative_dir)


def registry_models() -> list[dict[str, str]]:
    """Every public download of the catalogue as the Comfy Registry's `[tool.comfy] Models` entries, in catalogue
    order: `location` is the path below `ComfyUI/models/` (a folder's ends in "/"), `model_url` the file's download
    address (a folder's: its Hugging Face repository page). scripts/registry_models.py writes them into
    pyproject.toml; tests/test_registry.py keeps the two equal."""
    entries = []
    for known in KNOWN_FILES.values():
        if known.downloadable:
            location = "/" + FOLDERS[known.folder].relative_dir.replace(os.sep, "/") + "/" + known.filename
            entries.append({"location": location + ("/" if known.is_dir else ""), "model_url": known.url})
    return entries


# ---- other packs' folders -----------------------------------------------------------------------------------

# comfyui_controlnet_aux (Fannovel16) keeps each checkpoint at <ckpts>/<Hugging Face repo id>/<path in the repo>
# (src/custom_controlnet_aux/util.py, custom_hf_download). <ckpts> is the pack folder's ckpts/, or the
# `annotator_ckpts_path` of its config.yaml (relative to the pack folder, or absolute), and the environment
# variable AUX_ANNOTATOR_CKPTS_PATH overrides both (utils.py sets it from them when the pack loads).
CONTROLNET_AUX_PACK = "comfyui_controlnet_aux"  # its repository's and its registry id's name
CONTROLNET_AUX_ENV = "AUX_ANNOTATOR_CKPTS_PATH"
CONTROLNET_AUX_FOLDERS = ("diffbody_pose",)  # our folders whose known files it downloads too


def _is_controlnet_aux(folder_name: str) -> bool:
    """A custom_nodes folder of comfyui_controlnet_aux as git, the registry or a GitHub zip (…-main) name it."""
    name = folder_name.lower().replace("-", "_")
    return name.removesuffix("_main") == CONTROLNET_AUX_PACK


def controlnet_aux_ckpts_dirs(custom_nodes_dirs: list[str]) -> list[str]:
    """comfyui_controlnet_aux's checkpoint folders: $AUX_ANNOTATOR_CKPTS_PATH, else each installed copy's own
    (its config.yaml's annotator_ckpts_path, else its ckpts/)."""
    if os.environ.get(CONTROLNET_AUX_ENV):
        return [os.environ[CONTROLNET_AUX_ENV]]
    found = []
    for nodes_dir in custom_nodes_dirs:
        packs = sorted(os.listdir(nodes_dir)) if os.path.isdir(nodes_dir) else []
        for pack in (os.path.join(nodes_dir, name) for name in packs if _is_controlnet_aux(name)):
            if os.path.isdir(pack):
                found.append(os.path.join(pack, _configured_ckpts_path(pack) or "ckpts"))
    return found


def _configured_ckpts_path(pack_dir: str) -> str | None:
    config_path = os.path.join(pack_dir, "config.yaml")
    if not os.path.isfile(config_path):
        return None
    import yaml  # PyYAML: a ComfyUI requirement

    try:
        with open(config_path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None  # the pack falls back to its ckpts/ too
    value = config.get("annotator_ckpts_path") if isinstance(config, dict) else None
    return value if isinstance(value, str) and value else None


def controlnet_aux_dirs(folder: str, ckpts_dirs: list[str]) -> list[str]:
    """Where comfyui_controlnet_aux keeps the known files of one of our folders, under their own names."""
    if folder not in CONTROLNET_AUX_FOLDERS:
        return []
    dirs = []
    for known in KNOWN_FILES.values():
        in_repo = known.repo_path or known.filename
        if known.folder == folder and known.downloadable and os.path.basename(in_repo) == known.filename:
            dirs += [os.path.join(root, *known.repo_id.split("/"), os.path.dirname(in_repo)) for root in ckpts_dirs]
    return [os.path.normpath(d) for d in dict.fromkeys(dirs)]


def shared_dirs(folder: str, models_dir: str, custom_nodes_dirs: list[str],
                registered: "dict[str, list[str]] | None" = None) -> list[str]:
    """The existing folders of other packs that may hold files of `folder`, in search order: the folders
    named in its `shared` (their paths in `registered`, ComfyUI's folder_paths where a pack or
    extra_model_paths.yaml set them, and below `models_dir`), then comfyui_controlnet_aux's."""
    dirs = []
    for name in FOLDERS[folder].shared:
        dirs += list((registered or {}).get(name, [])) + [os.path.join(models_dir, name)]
    dirs += controlnet_aux_dirs(folder, controlnet_aux_ckpts_dirs(custom_nodes_dirs))
    return [d for d in dict.fromkeys(os.path.normpath(d) for d in dirs) if os.path.isdir(d)]


def known_names(folder: str) -> set[str]:
    """The names the catalogue knows in a folder (files and model folders): what is taken from shared folders."""
    return {f.filename for f in KNOWN_FILES.values() if f.folder == folder} | \
        {alias for f in KNOWN_FILES.values() if f.folder == folder for alias in f.aliases}


NODE_FETCH_HINT = "Or switch on 'auto_download' on the node to fetch it into that folder."


def missing_message(filename: str, folder: str, searched: list[str], fetch_hint: str = NODE_FETCH_HINT) -> str:
    """The error text for a missing file: which file, where to put it, where to get it."""
    known = KNOWN_FILES.get(filename)
    where = searched[0] if searched else f"ComfyUI/models/{FOLDERS[folder].relative_dir}" if folder in FOLDERS else folder
    lines = [f"DiffBody: model file '{filename}' was not found.",
             f"Put it in: {where}"]
    if len(searched) > 1:
        lines.append("(also searched: " + ", ".join(searched[1:]) + ")")
    if known is not None and known.downloadable:
        what = "the whole folder" if known.is_dir else "it"
        lines.append(f"Download {what} from: {known.url}  [{known.description}]")
        lines.append(fetch_hint)
    elif known is not None and known.source_page:
        lines.append(f"Get it from: {known.source_page}  [{known.description}] (the pack does not download it)")
    elif known is not None:
        lines.append(f"[{known.description}] No DiffBody weights are public: train them with the pack's "
                     "training scripts (README, 'Training'), or use the public-weights workflow.")
    return "\n".join(lines)


def find_file(filename: str, search_dirs: list[str]) -> str | None:
    """First existing `search_dir/filename` (a file, or a folder for Hugging Face layouts)."""
    for d in search_dirs:
        candidate = os.path.join(d, filename)
        if os.path.exists(candidate):
            return candidate
    return None


def require_file(filename: str, folder: str, search_dirs: list[str]) -> str:
    found = find_file(filename, search_dirs)
    if found is None:
        raise MissingModelFile(missing_message(filename, folder, search_dirs))
    return found


def download(filename: str, dest_dir: str) -> str:
    """Fetch a known file (or model folder) from Hugging Face (or its direct address) into `dest_dir`.

    Only ever called when the user asked for it (the nodes' `auto_download` switch, the command
    line's `--download`). The file goes through the user's Hugging Face cache, so a copy that is
    already there is reused without a download (and HF_HUB_OFFLINE is honoured); it is then
    hard-linked (copied across file systems) into the ComfyUI models folder - only after its content was
    checked (verify_download): a tampered or damaged copy in the cache never reaches the models folder.
    """
    known = KNOWN_FILES.get(filename)
    if known is None or not known.downloadable:
        raise MissingModelFile(f"DiffBody: no download source is known for '{filename}'.")
    try:
        import huggingface_hub
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with transformers
        raise MissingDependency("Automatic download needs huggingface_hub: pip install huggingface_hub") from e
    os.makedirs(dest_dir, exist_ok=True)
    target = os.path.join(dest_dir, known.filename)
    if known.direct_url:
        return _download_url(known, target)
    if known.is_dir:
        snapshot = huggingface_hub.snapshot_download(known.repo_id, revision=known.revision or None,
                                                      ignore_patterns=list(known.skip_patterns) or None)
        for cached in sorted(Path(snapshot).rglob("*")):
            if cached.is_file():
                verify_download(str(cached), known, "")
        shutil.copytree(snapshot, target, copy_function=_link_or_copy, dirs_exist_ok=True)
    else:  # saved under our file name, whatever its name in the repository
        cached = huggingface_hub.hf_hub_download(known.repo_id, known.repo_path or known.filename)
        verify_download(cached, known, known.sha256)
        _link_or_copy(cached, target)
    return target


def verify_download(cached: str, known: ModelFile, catalogue_sha256: str) -> None:
    """Raise WrongModelFile unless the cached file's content is what was published.

    Against the catalogue's SHA-256 where it has one. Otherwise against the hash the Hugging Face cache files the
    content under: a blob's name is the file's SHA-256 (files in Git LFS: every weight file) or its git blob
    SHA-1 (small text files such as config.json). A file with neither is refused too: nothing unchecked moves
    into the models folder."""
    import hashlib

    blob = os.path.basename(os.path.realpath(cached))
    if catalogue_sha256:
        kind, expected, source = "sha256", catalogue_sha256, "the pack's catalogue"
    elif len(blob) == 64:
        kind, expected, source = "sha256", blob, "the Hugging Face cache's record"
    elif len(blob) == 40:
        kind, expected, source = "git-sha1", blob, "the Hugging Face cache's record"
    else:
        raise WrongModelFile(f"DiffBody: the downloaded '{cached}' ({known.filename}) has no hash to check it "
                             "against; it was not put into the models folder. Download it by hand from "
                             f"{known.url or known.repo_id}.")
    digest = _hash_file(cached, hashlib.sha256() if kind == "sha256"
                        else hashlib.sha1(b"blob %d\0" % os.path.getsize(cached)))
    if digest != expected.lower():
        raise WrongModelFile(
            f"DiffBody: the downloaded '{os.path.basename(cached)}' for {known.filename} does not match the "
            f"{kind.upper()} in {source} (expected {expected}, got {digest}); it was not put into the "
            f"models folder. Delete '{os.path.realpath(cached)}' from the Hugging Face cache and download it again.")


def _hash_file(path: str, digest) -> str:
    """`digest` (a hashlib object, possibly primed) fed the file's bytes in 4 MiB chunks: its hex digest."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_url(known: ModelFile, target: str) -> str:
    """A file outside Hugging Face, written under a temporary name, checked, and renamed when whole and right:
    against the catalogue's SHA-256, else the SHA-256 prefix in a torchvision-style name (`name-<8 hex>.pth`,
    what torch.hub checks)."""
    import hashlib
    import tempfile
    import urllib.request

    prefix = re.search(r"-([0-9a-f]{8,})\.[a-z]+$", known.filename)
    expected = known.sha256 or (prefix.group(1) if prefix else "")
    if not expected:
        raise WrongModelFile(f"DiffBody: the catalogue has no hash for {known.filename}, so a download could not be "
                             f"checked; download it by hand from {known.direct_url}.")
    handle, partial = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", dir=os.path.dirname(target))
    os.close(handle)
    try:
        urllib.request.urlretrieve(known.direct_url, partial)
        digest = _hash_file(partial, hashlib.sha256())
        if not digest.startswith(expected.lower()):
            raise WrongModelFile(f"DiffBody: the file downloaded from {known.direct_url} does not match its SHA-256 "
                                 f"(expected {expected}..., got {digest}); it was not put into the models folder.")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _link_or_copy(src: str, dst: str) -> None:
    src = os.path.realpath(src)  # the hub cache keeps blobs behind symlinks
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


COMMAND_LINE_FETCH_HINT = "Or pass --download to fetch it."
# The package's folder; inside ComfyUI it sits in ComfyUI/custom_nodes/.
PACK_ROOT = Path(__file__).resolve().parent.parent


def default_models_dir() -> Path:
    """ComfyUI's models folder when the pack sits in ComfyUI/custom_nodes/, else ~/ComfyUI/models
    ($DIFFBODY_MODELS_DIR overrides both): the command lines' default `--models-dir`."""
    if os.environ.get("DIFFBODY_MODELS_DIR"):
        return Path(os.environ["DIFFBODY_MODELS_DIR"])
    if PACK_ROOT.parent.name == "custom_nodes":
        return PACK_ROOT.parent.parent / "models"
    return Path.home() / "ComfyUI" / "models"


@dataclass(frozen=True)
class Alternatives:
    """One model in any of several forms, tried in order (a diffusers folder, then the single file ComfyUI loads
    from checkpoints/): the first one found is used. It resolves under its first name."""

    options: tuple[tuple[str, str], ...]  # (file name, folder)

    @property
    def name(self) -> str:
        return self.options[0][0]


def resolve_model_files(wanted, models_dir: Path, *, download_missing: bool, hint: str = "") -> dict[str, str]:
    """{file name: path} for (file name, folder) pairs and Alternatives (under their first name) in a
    ComfyUI-style models folder, for the command lines (the nodes resolve through ComfyUI's folder_paths),
    downloading the public ones when asked (an Alternatives' first downloadable form). With missing files, raise
    MissingModelFiles listing each with where to get it; `hint` names the caller's own way around a missing
    file, before the common ones."""
    paths, missing = {}, []
    for item in wanted:
        options = item.options if isinstance(item, Alternatives) else (tuple(item),)
        path = _find_first(options, models_dir, download_missing)
        if path is None:
            missing.append(_missing_options_message(options, models_dir))
        else:
            paths[options[0][0]] = path
    if missing:
        raise MissingModelFiles(
            f"Missing model files ({len(missing)}); models folder: {models_dir}\n\n" + "\n\n".join(missing)
            + f"\n\nPass --models-dir if your ComfyUI models folder is elsewhere; {hint}--tiny runs a plumbing "
              "check on tiny random weights.", missing)
    return paths


def command_line_dirs(folder: str, models_dir: "str | Path") -> list[str]:
    """Where the command lines look for a folder's files: its folder in `models_dir`, then other packs' folders
    (`shared_dirs`, with the custom_nodes/ beside `models_dir` and of `comfyui_dirs()`)."""
    custom_nodes = [str(Path(models_dir).parent / "custom_nodes")] + [str(d / "custom_nodes") for d in comfyui_dirs()]
    return [default_dir(str(models_dir), folder)] + shared_dirs(folder, str(models_dir), custom_nodes)


def _find_first(options: tuple[tuple[str, str], ...], models_dir: Path, download_missing: bool) -> str | None:
    for name, folder in options:
        path = find_file(name, command_line_dirs(folder, models_dir))
        if path is not None:
            return path
    for name, folder in options if download_missing else ():
        if name in KNOWN_FILES and KNOWN_FILES[name].downloadable:
            return download(name, default_dir(str(models_dir), folder))
    return None


def _missing_options_message(options: tuple[tuple[str, str], ...], models_dir: Path) -> str:
    if len(options) == 1:
        name, folder = options[0]
        return missing_message(name, folder, [default_dir(str(models_dir), folder)], fetch_hint=COMMAND_LINE_FETCH_HINT)
    lines = [f"DiffBody: model '{options[0][0]}' was not found in any of its forms; put one of them in place:"]
    for name, folder in options:
        known = KNOWN_FILES.get(name)
        lines.append(f"  - '{name}' in {default_dir(str(models_dir), folder)}"
                     + (f"  [{known.description}]" if known is not None else ""))
        if known is not None and known.downloadable:
            lines.append(f"    Download {'the whole folder' if known.is_dir else 'it'} from: {known.url}")
        elif known is not None and known.source_page:
            lines.append(f"    Get it from: {known.source_page} (the pack does not download it)")
    if any(name in KNOWN_FILES and KNOWN_FILES[name].downloadable for name, _ in options):
        lines.append("Or pass --download to fetch the first of them.")
    return "\n".join(lines)


# ---- CLIP tokenizer files (single-file checkpoints hold none) -----------------------------------------------

# CLIP's BPE files: every Stable Diffusion (1.x, 2.x, XL) CLIP tokenizer reads these two; ComfyUI ships them in
# comfy/sd1_tokenizer/, and a diffusers folder's tokenizer/ holds them too.
CLIP_TOKENIZER_FILES = ("vocab.json", "merges.txt")
_TOKENIZER_FOLDERS = ("stable-diffusion-xl-base-1.0", "stable-diffusion-2-1-base")


def comfyui_dirs() -> list[Path]:
    """The ComfyUI folders the pack knows of: the one it is installed in (ComfyUI/custom_nodes/<pack>), then
    $DIFFBODY_COMFYUI_DIR."""
    found = [PACK_ROOT.parent.parent] if PACK_ROOT.parent.name == "custom_nodes" else []
    if os.environ.get("DIFFBODY_COMFYUI_DIR"):
        found.append(Path(os.environ["DIFFBODY_COMFYUI_DIR"]))
    return found


def clip_tokenizer_dirs(models_dir: "str | Path | None" = None) -> list[str]:
    """Where CLIP's tokenizer files are looked for, in order: comfy/sd1_tokenizer/ of those ComfyUI folders, then
    the tokenizer/ of the Stable Diffusion diffusers folders in `models_dir`."""
    dirs = [str(d / "comfy" / "sd1_tokenizer") for d in comfyui_dirs()]
    if models_dir is not None:
        dirs += [os.path.join(default_dir(str(models_dir), "diffusers"), name, "tokenizer") for name in _TOKENIZER_FOLDERS]
    return dirs


def find_clip_tokenizer(search_dirs: list[str]) -> str | None:
    """The first of `search_dirs` holding both CLIP tokenizer files."""
    for d in search_dirs:
        if all(os.path.isfile(os.path.join(d, name)) for name in CLIP_TOKENIZER_FILES):
            return d
    return None


def missing_clip_tokenizer_message(checkpoint: str, searched: list[str]) -> str:
    return (f"DiffBody: '{os.path.basename(checkpoint)}' is a single-file checkpoint, which holds no tokenizer, and "
            f"CLIP's tokenizer files ({' and '.join(CLIP_TOKENIZER_FILES)}) were not found.\n"
            f"Looked in: {', '.join(searched) if searched else '(nowhere: the pack is not inside a ComfyUI folder)'}\n"
            "ComfyUI ships them in ComfyUI/comfy/sd1_tokenizer/: install the pack in ComfyUI/custom_nodes/, or set "
            "DIFFBODY_COMFYUI_DIR to your ComfyUI folder, or name a folder holding them (the command line's "
            "--clip-tokenizer; e.g. the tokenizer/ folder of https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0).")
