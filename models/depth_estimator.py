"""Monocular depth estimators in the transformers layout: Depth Anything V2 and DPT (MiDaS v3).

Folders as `huggingface-cli download` leaves them, e.g. `depth-anything/Depth-Anything-V2-Large-hf`
(also -Small-hf, -Base-hf) or `Intel/dpt-hybrid-midas`: `config.json` (model_type "depth_anything" or
"dpt"), `model.safetensors` and `preprocessor_config.json` (a DPTImageProcessor: Depth Anything resizes
keeping the aspect ratio to a short side of 518 in multiples of 14, DPT-Hybrid to 384 x 384). Loaded
with AutoModelForDepthEstimation / AutoImageProcessor, never from the hub, safetensors only.

Both networks predict *relative inverse depth* (disparity up to an unknown scale and shift): larger
means nearer. `DepthEstimator.predict` brings it back to the input size and normalises each image to
0..1, so near is bright and far is dark - the MiDaS / ControlNet depth-map convention that stage 2's
depth prior (and ControlNet-Union's depth type) expects.
"""

from __future__ import annotations

import glob
import math
import os

import torch
import torch.nn.functional as F

from .errors import MissingModelFile, WrongModelFile
from .files import KNOWN_FILES, missing_message
from .loading import check_all_weights_loaded, read_json_object

FOLDER = "diffbody_priors"
MODEL_TYPES = ("depth_anything", "dpt")
DEPTH_MODEL_NAMES = ("Depth-Anything-V2-Large-hf", "Depth-Anything-V2-Base-hf", "Depth-Anything-V2-Small-hf",
                     "dpt-hybrid-midas")
DEFAULT_DEPTH_MODEL = "Depth-Anything-V2-Large-hf"
MAX_ASPECT = 4.0  # thinner strips are padded to 1:4 before depth and Marigold normal estimation


class DepthEstimator:
    """A transformers depth network and its image processor as one movable object."""

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor

    @classmethod
    def load(cls, model_dir: str, *, device="cpu", dtype: torch.dtype | None = None) -> "DepthEstimator":
        """Load a local folder (checked first: see `check_depth_folder`) in eval mode on `device`.
        dtype None: float32 (the weights' own precision)."""
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        check_depth_folder(model_dir)
        processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
        model, info = AutoModelForDepthEstimation.from_pretrained(
            model_dir, local_files_only=True, use_safetensors=True, output_loading_info=True)
        check_all_weights_loaded(info, model_dir, "depth network")
        return cls(model.to(device=device, dtype=dtype or torch.float32).eval(), processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device) -> "DepthEstimator":
        self.model.to(device)
        return self

    def size_bytes(self) -> int:
        return _module_bytes(self.model)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) float RGB in 0..1 -> (B,1,H,W) float32 relative inverse depth on the input's device,
        each image normalised to 0..1 (nearest point 1, farthest 0; a flat prediction gives all 0)."""
        height, width = images.shape[-2:]
        padded, (top, left) = pad_to_aspect(images.detach().float().cpu(), MAX_ASPECT)
        # The processor resizes and normalises on the CPU; our images are already 0..1 floats.
        inputs = self.processor(images=list(padded), return_tensors="pt", do_rescale=False,
                                input_data_format="channels_first")
        pixels = inputs["pixel_values"].to(device=self.device, dtype=self.dtype)
        predicted = self.model(pixel_values=pixels).predicted_depth.float()  # (B, h, w)
        depth = F.interpolate(predicted.unsqueeze(1), size=padded.shape[-2:], mode="bicubic", align_corners=False)
        return normalise_per_image(depth[..., top:top + height, left:left + width]).to(images.device)


def pad_to_aspect(images: torch.Tensor, max_aspect: float) -> tuple[torch.Tensor, tuple[int, int]]:
    """Strips thinner than 1:max_aspect, padded (edge pixels repeated, centred) to that aspect, and the
    (top, left) offset of the original. The networks saw ordinary photo shapes, and their processors
    shrink a very thin strip's short side below one patch (a size-0 image)."""
    height, width = images.shape[-2:]
    pad_h = max(0, math.ceil(width / max_aspect) - height)
    pad_w = max(0, math.ceil(height / max_aspect) - width)
    if not (pad_h or pad_w):
        return images, (0, 0)
    top, left = pad_h // 2, pad_w // 2
    return F.pad(images, (left, pad_w - left, top, pad_h - top), mode="replicate"), (top, left)


def normalise_per_image(maps: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> each item min-max scaled to 0..1 (an item with one value everywhere becomes 0)."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values.view(-1, 1, 1, 1), flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = high - low  # no epsilon: relative depth has no fixed scale, tiny spans are still valid
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1.0), 0.0).clamp(0, 1)


def check_depth_folder(model_dir: str) -> None:
    """Raise MissingModelFile / WrongModelFile unless `model_dir` is a complete depth model folder."""
    name = os.path.basename(os.path.normpath(model_dir))
    if not os.path.isdir(model_dir):
        raise MissingModelFile(missing_message(name, FOLDER, [os.path.dirname(os.path.abspath(model_dir))]))
    config = read_json_object(os.path.join(model_dir, "config.json"))
    if config is None or config.get("model_type") not in MODEL_TYPES:
        found = "no readable config.json" if config is None else f"model_type {config.get('model_type')!r}"
        raise WrongModelFile(
            f"DiffBody: '{model_dir}' is not a depth model folder: expected a transformers config.json with "
            f"model_type \"depth_anything\" or \"dpt\" (depth-anything/Depth-Anything-V2-*-hf, "
            f"Intel/dpt-hybrid-midas), found {found}.")
    if not os.path.isfile(os.path.join(model_dir, "preprocessor_config.json")):
        raise WrongModelFile(f"DiffBody: the depth model folder '{model_dir}' lacks preprocessor_config.json; "
                             "download the whole folder again.")
    if glob.glob(os.path.join(model_dir, "*.safetensors")):
        return
    source = KNOWN_FILES[name].url if name in KNOWN_FILES else "the model's Hugging Face page"
    if glob.glob(os.path.join(model_dir, "*.bin")):
        raise WrongModelFile(
            f"DiffBody: the depth model folder '{model_dir}' only has pickled .bin weights; the pack loads "
            f"safetensors only (pickles can run code). Get model.safetensors from {source}.")
    raise MissingModelFile(f"DiffBody: the depth model folder '{model_dir}' has no .safetensors weights "
                           f"(an interrupted download?). Download it again from {source}.")


def _module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
