"""The one place that talks to ComfyUI: model folders, IMAGE <-> tensor, progress, cancel, devices, memory.

Every ComfyUI import is inside a function, so importing the pack stays cheap and the modules that
use this file can still be imported (and their logic tested) outside ComfyUI.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

from ..models.errors import MissingModelFile
from ..models.files import FOLDERS, KNOWN_FILES, download, find_file, known_names, missing_message

if TYPE_CHECKING:
    import torch


def running_inside_comfyui() -> bool:
    try:
        import folder_paths  # noqa: F401  (a top-level module only ComfyUI provides)
    except ImportError:
        return False
    return hasattr(folder_paths, "folder_names_and_paths")


AUTO_DOWNLOAD_TOOLTIP = ("Off (default): a missing model file stops the run with a message saying where to put it. "
                         "On: missing known files are downloaded from Hugging Face into the right ComfyUI models folder.")
COMFY_DTYPE_TOOLTIP = ("auto: what ComfyUI picks for its own UNet: fp16/bf16 on your GPU, float32 on CPU, or what "
                       "its --fp16-unet / --bf16-unet / --fp32-unet flag says.")


def auto_download_input(tooltip: str = AUTO_DOWNLOAD_TOOLTIP) -> tuple:
    """The nodes' `auto_download` switch: off unless the user turns it on."""
    return ("BOOLEAN", {"default": False, "tooltip": tooltip})


def dtype_input(tooltip: str = COMFY_DTYPE_TOOLTIP) -> tuple:
    """The nodes' `dtype` choice ("auto" or a dtype name, see models/devices.py)."""
    from ..models.devices import DTYPE_CHOICES

    return (list(DTYPE_CHOICES), {"default": "auto", "tooltip": tooltip})


def register_model_folders() -> None:
    """Add the pack's model folders to ComfyUI's `folder_paths` (called once, at pack import): our own folder
    first (after any extra_model_paths.yaml entries of the same name, which ComfyUI has read by then), then the
    folders where other packs keep the same files (models/files.py `shared_dirs`)."""
    import folder_paths

    for folder in FOLDERS.values():
        path = os.path.join(folder_paths.models_dir, folder.relative_dir)
        if folder.name in folder_paths.folder_names_and_paths:
            if not folder.comfy_builtin:
                folder_paths.add_model_folder_path(folder.name, path)
                _keep_extensions(folder.name, folder.extensions)
        else:
            # A new name: set the extension filter ourselves (add_model_folder_path would list every file).
            folder_paths.folder_names_and_paths[folder.name] = ([path], set(folder.extensions))
        _SHARED_DIRS[folder.name] = _other_packs_dirs(folder.name)
        for shared in _SHARED_DIRS[folder.name]:
            folder_paths.add_model_folder_path(folder.name, shared)


# Our folder name -> the other packs' folders registered under it (only known names are taken from those).
_SHARED_DIRS: dict[str, list[str]] = {}


def _other_packs_dirs(folder: str) -> list[str]:
    import folder_paths

    from ..models.files import shared_dirs

    registered = {name: folder_paths.get_folder_paths(name) for name in FOLDERS[folder].shared
                  if name in folder_paths.folder_names_and_paths}
    custom_nodes = list(folder_paths.folder_names_and_paths.get("custom_nodes", ([], set()))[0])
    return [d for d in shared_dirs(folder, folder_paths.models_dir, custom_nodes, registered)
            if d not in search_dirs(folder)]


def _keep_extensions(name: str, extensions) -> None:
    """An extra_model_paths.yaml entry creates a new folder name with no extension filter (every file listed):
    give it ours."""
    import folder_paths

    paths, existing = folder_paths.folder_names_and_paths[name]
    if not existing and extensions:
        folder_paths.folder_names_and_paths[name] = (paths, set(extensions))


def search_dirs(folder: str) -> list[str]:
    import folder_paths

    try:
        return folder_paths.get_folder_paths(folder)
    except KeyError:
        return [os.path.join(folder_paths.models_dir, FOLDERS[folder].relative_dir)]


def _from_shared_dir_only(name: str, folder: str) -> bool:
    """Found only in another pack's folder (where we take only the names we know)."""
    own = [d for d in search_dirs(folder) if d not in _SHARED_DIRS.get(folder, ())]
    return find_file(name, own) is None


def list_files(folder: str) -> list[str]:
    """File names for a model dropdown: the files present first, then the known files that are absent, so a
    workflow that names them still validates and then fails with the message that says where to get them.
    From other packs' folders only the names the catalogue knows are listed."""
    import folder_paths

    try:
        present = folder_paths.get_filename_list(folder)
    except KeyError:
        present = []
    known = known_names(folder)
    present = [name for name in present if name in known or not _from_shared_dir_only(name, folder)]
    wanted = {f.filename for f in KNOWN_FILES.values() if f.folder == folder and not f.is_dir}
    return present + sorted(wanted - set(present))


def list_model_dirs(folder: str) -> list[str]:
    """Sub-folders (Hugging Face model folders) of a folder such as models/LLM, the present ones first, then
    the known absent ones; from other packs' folders only the known names."""
    shared, known = _SHARED_DIRS.get(folder, ()), known_names(folder)
    present = {name for d in search_dirs(folder) if os.path.isdir(d)
               for name in os.listdir(d) if os.path.isdir(os.path.join(d, name)) and (d not in shared or name in known)}
    wanted = {f.filename for f in KNOWN_FILES.values() if f.folder == folder and f.is_dir}
    return sorted(present) + sorted(wanted - present)


def model_path(filename: str, folder: str, auto_download: bool = False) -> str:
    """Full path of a model file, downloading it first only when the user switched that on."""
    dirs = search_dirs(folder)
    found = find_file(filename, dirs)
    if found is not None:
        return found
    if auto_download and filename in KNOWN_FILES and KNOWN_FILES[filename].downloadable:
        return download(filename, dirs[0])
    raise MissingModelFile(missing_message(filename, folder, dirs))


def comfy_to_bchw(image: "torch.Tensor") -> "torch.Tensor":
    """IMAGE (B,H,W,C) or (H,W,C) in 0..1 with C in 1..4 -> contiguous (B,3,H,W) float32 RGB in 0..1, what
    the pipelines take. Inputs from other nodes can have 1, 2 or 4 channels or odd shapes: they are
    normalised here, once, with clear errors."""
    import torch

    from ..pipelines.image import BadImage

    if not isinstance(image, torch.Tensor):
        raise BadImage(f"expected an IMAGE tensor, got {type(image).__name__}")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise BadImage(f"expected an IMAGE of shape (batch, height, width, channels), got {tuple(image.shape)}")
    b, h, w, c = image.shape
    if b == 0 or h == 0 or w == 0:
        raise BadImage(f"the image is empty (shape {tuple(image.shape)})")
    if c in (1, 2):  # grey, grey + alpha
        image = image[..., :1].expand(b, h, w, 3)
    elif c == 4:  # RGBA: the alpha channel carries no colour to restore
        image = image[..., :3]
    elif c != 3:
        raise BadImage(f"expected 1, 3 or 4 colour channels, got {c} (shape {tuple(image.shape)})")
    return image.permute(0, 3, 1, 2).float().clamp(0, 1).contiguous()


def control_hint(image: "torch.Tensor") -> "torch.Tensor":
    """IMAGE -> a ControlNet hint (B,3,H,W) laid out in memory as ComfyUI's own Apply ControlNet hands it
    (a channels-last view of the IMAGE): the CPU kernels follow the layout, so only this layout gives the
    stock node's result bit for bit."""
    import torch

    return comfy_to_bchw(image).contiguous(memory_format=torch.channels_last)


def frames_per_image(keypoints, count: int) -> list[dict] | None:
    """A POSE_KEYPOINT input (one frame, or a list of them) as one frame per image of a batch of `count`: a single
    frame stands for every image. None when there are frames, but neither 1 nor `count` of them; [] for none."""
    frames = [keypoints] if isinstance(keypoints, dict) else list(keypoints or [])
    if len(frames) == 1:
        return frames * count
    return frames if len(frames) in (0, count) else None


def bchw_to_comfy(images: "torch.Tensor") -> "torch.Tensor":
    """(B,3,H,W) -> ComfyUI IMAGE (B,H,W,3) float32 on the CPU."""
    return images.detach().permute(0, 2, 3, 1).float().clamp(0, 1).cpu().contiguous()


def progress(total: int) -> Callable[[int, int], None]:
    """A callback `(done, total)` for the pipelines: drives the node's progress bar and raises
    ComfyUI's interrupt exception when the user pressed cancel, so loops stop within one step."""
    import comfy.model_management
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)

    def update(done: int, new_total: int = total) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, new_total)

    return update


def torch_device():
    import comfy.model_management

    return comfy.model_management.get_torch_device()


def offload_device():
    import comfy.model_management

    return comfy.model_management.unet_offload_device()


def free_memory_for(nbytes: int) -> None:
    """Ask ComfyUI to unload other models until `nbytes` fit on the compute device."""
    import comfy.model_management

    comfy.model_management.free_memory(nbytes, comfy.model_management.get_torch_device())


def soft_empty_cache() -> None:
    import comfy.model_management

    comfy.model_management.soft_empty_cache()


class on_compute_device:
    """Context manager: make room through ComfyUI (which unloads its own models as needed), move a
    module onto the compute device for the duration, and send it back to the offload device after,
    as ComfyUI's own upscale node does. Modules that cannot move (bitsandbytes-quantised ones) stay.

        with glue.on_compute_device(model, size_bytes) as device: ...
    """

    def __init__(self, module, size_bytes: int, *, movable: bool = True, offload_after: bool = True):
        self.module, self.size_bytes = module, size_bytes
        self.movable, self.offload_after = movable, offload_after

    def __enter__(self):
        device = torch_device()
        if self.movable:
            free_memory_for(self.size_bytes)
            self.module.to(device)
        return device

    def __exit__(self, *exc_info):
        if self.movable and self.offload_after:
            self.module.to(offload_device())
        soft_empty_cache()
        return False


def preferred_dtype(choice: str = "auto"):
    """The dtype a diffusion network should run in: the user's choice, or for "auto" what ComfyUI picks for
    its own UNet on the compute device (fp16/bf16 on GPUs that support it, float32 on the CPU), its
    --fp16-unet / --bf16-unet / --fp32-unet flags included: a CPU user short of RAM starts ComfyUI with
    --bf16-unet and our networks halve with SDXL's. Its fp8 storage flags do not apply to our modules."""
    import torch

    from ..models.devices import auto_dtype, named_dtype

    if choice != "auto":
        return named_dtype(choice)
    import comfy.model_management as mm

    device = mm.get_torch_device()
    chosen = mm.unet_dtype(device, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
    if chosen in (torch.float16, torch.bfloat16, torch.float32):
        return chosen
    return auto_dtype(fp16=mm.should_use_fp16(device), bf16=mm.should_use_bf16(device))


def wrap_for_memory_management(module):
    """A ModelPatcher around our own module, so ComfyUI loads it to the GPU with its other models,
    offloads it when something else needs the room, and counts it in its memory budget."""
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(module, load_device=torch_device(), offload_device=offload_device())


def upscale_model_patcher(module, source_path: str):
    """The patcher newer ComfyUI's own upscale-model loader attaches to its UPSCALE_MODEL as `.patcher`
    (its "Upscale Image (using Model)" hands that to load_models_gpu): the patcher class core uses for its
    own loaders, read at call time (ComfyUI rebinds `CoreModelPatcher` at start-up when dynamic VRAM is on),
    with `fast_disk` judged from the weights file as core judges it. ComfyUI versions without those
    (0.3.75) get a plain ModelPatcher."""
    import comfy.model_patcher

    patcher_class = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    return patcher_class(module, load_device=torch_device(), offload_device=offload_device(),
                         **_fast_disk_argument(patcher_class, source_path))


def _fast_disk_argument(patcher_class, source_path: str) -> dict:
    import inspect

    try:
        import comfy.storage
    except ImportError:
        return {}
    judge = getattr(comfy.storage, "model_fast_disk", None)
    if judge is None or "fast_disk" not in inspect.signature(patcher_class.__init__).parameters:
        return {}
    return {"fast_disk": judge([source_path])}


def load_to_compute_device(*patchers) -> None:
    import comfy.model_management

    comfy.model_management.load_models_gpu(list(patchers))


def conditioning_tensor(conditioning):
    """The cross-attention context of a CONDITIONING (the first entry's tensor, (1, L, D))."""
    if not conditioning:
        raise ValueError("DiffBody: the CONDITIONING input is empty; connect a CLIP Text Encode node.")
    return conditioning[0][0]


class PrecomputedText:
    """A TextEncoder for the pipelines whose two texts ComfyUI has already encoded (CLIP Text
    Encode -> CONDITIONING): `encode` maps the POSITIVE / NEGATIVE labels to those contexts."""

    POSITIVE, NEGATIVE = "<positive conditioning>", "<negative conditioning>"

    def __init__(self, positive, negative):
        self.contexts = {self.POSITIVE: positive, self.NEGATIVE: negative}

    def encode(self, prompts: list[str]):
        import torch

        contexts = [self.contexts[p] for p in prompts]
        length = max(c.shape[1] for c in contexts)
        # Long prompts give longer contexts (77 tokens per chunk); repeat shorter ones to match, as ComfyUI does.
        return torch.cat([c.repeat(1, length // c.shape[1], 1) for c in contexts]).float()


class ComfyVAECodec:
    """A LatentCodec over ComfyUI's VAE object: (B,3,H,W) 0..1 <-> latents scaled as SD's UNet sees them."""

    def __init__(self, vae):
        import comfy.latent_formats

        self.vae = vae
        self.scale = comfy.latent_formats.SD15().scale_factor  # SD 2.x uses SD 1.x's latent space

    def encode(self, images):
        return self.vae.encode(images.movedim(1, -1)[..., :3]).float() * self.scale

    def decode(self, latents):
        return self.vae.decode(latents / self.scale).movedim(-1, 1).float().clamp(0, 1).cpu()


def clip_vision_zero_input_features(clip_vision):
    """Penultimate features of an all-zero CLIP input (zero *after* normalisation): IP-Adapter's
    unconditional image, as its reference code and training use. (A black IMAGE through
    encode_image would be normalised to a non-zero input.)"""
    import comfy.model_management
    import torch

    comfy.model_management.load_model_gpu(clip_vision.patcher)
    pixels = torch.zeros(1, 3, clip_vision.image_size, clip_vision.image_size, device=clip_vision.load_device)
    with torch.no_grad():
        out = clip_vision.model(pixel_values=pixels, intermediate_output=-2)
    return out[1].to(comfy.model_management.intermediate_device())


def save_temp_images(images, prefix: str) -> list[dict]:
    """Write an IMAGE batch to ComfyUI's temp folder, as its Preview Image node does, and return the
    entries the frontend loads through /view: [{"filename", "subfolder", "type": "temp"}, ...]."""
    import folder_paths
    import numpy as np
    from PIL import Image

    height, width = images.shape[1], images.shape[2]
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, folder_paths.get_temp_directory(),
                                                                          width, height)
    entries = []
    for index, image in enumerate(images):
        pixels = (image[..., :3].clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
        filename = f"{name}_{counter + index:05}_.png"
        Image.fromarray(pixels).save(os.path.join(folder, filename), compress_level=1)
        entries.append({"filename": filename, "subfolder": subfolder, "type": "temp"})
    return entries
