"""Marigold surface normals (`prs-eth/marigold-normals-v1-1`) through diffusers' MarigoldNormalsPipeline.

The folder is a diffusers pipeline folder: `model_index.json` (`_class_name` "MarigoldNormalsPipeline",
with `default_denoising_steps` and `default_processing_resolution`), `unet/` (an SD 2-size UNet with 8
input channels: image latent + noisy normals latent), `vae/`, `text_encoder/`, `tokenizer/`,
`scheduler/`. Loaded locally, safetensors only.

What `MarigoldNormals.predict` returns is Marigold's own output: unit vectors in [-1, 1] in the camera
frame with X to the right, Y up and Z towards the viewer. Turning that into the pack's normal-map
colours (see pipelines/depth_normal.py) is the caller's job.
"""

from __future__ import annotations

import glob
import os
from typing import Callable

import torch

from .depth_estimator import MAX_ASPECT, pad_to_aspect
from .errors import MissingModelFile, WrongModelFile
from .files import missing_message
from .loading import read_json_object

FOLDER = "diffbody_priors"
PIPELINE_CLASS = "MarigoldNormalsPipeline"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTED_COMPONENTS = ("unet", "vae", "text_encoder")
NORMAL_MODEL_NAMES = ("marigold-normals-v1-1",)


class MarigoldNormals:
    """A loaded MarigoldNormalsPipeline as one movable object."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        pipeline.set_progress_bar_config(disable=True)  # progress is reported per image by the caller

    @classmethod
    def load(cls, model_dir: str, *, device="cpu", dtype: torch.dtype | None = None) -> "MarigoldNormals":
        """Load a local folder (checked first: see `check_normals_folder`) on `device`; dtype None: float32."""
        from diffusers import MarigoldNormalsPipeline

        check_normals_folder(model_dir)
        pipeline = MarigoldNormalsPipeline.from_pretrained(model_dir, local_files_only=True, use_safetensors=True,
                                                           variant=weights_variant(model_dir),
                                                           torch_dtype=dtype or torch.float32)
        return cls(pipeline.to(device))

    @property
    def device(self) -> torch.device:
        return self.pipeline.unet.device

    @property
    def default_steps(self) -> int:
        return int(self.pipeline.default_denoising_steps or 4)

    def to(self, device) -> "MarigoldNormals":
        self.pipeline.to(device)
        return self

    def size_bytes(self) -> int:
        modules = (self.pipeline.unet, self.pipeline.vae, self.pipeline.text_encoder)
        return sum(t.numel() * t.element_size() for m in modules for t in list(m.parameters()) + list(m.buffers()))

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, *, steps: int | None = None, seed: int = 0,
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """(B,3,H,W) float RGB in 0..1 -> (B,3,H,W) float32 unit normals (X right, Y up, Z to the viewer)
        on the input's device. One image at a time, each with its own seeded noise (seed + index), so
        a result does not depend on the batch; `progress(done, total)` after each image."""
        results = []
        for index, image in enumerate(images):
            generator = torch.Generator("cpu").manual_seed(seed + index)  # same noise on every device
            picture = image.unsqueeze(0).float().clamp(0, 1)
            height, width = picture.shape[-2:]
            # Marigold refuses strips thinner than 1:8 ("Extreme aspect ratio"): padded as for depth, cropped back.
            padded, (top, left) = pad_to_aspect(picture, MAX_ASPECT)
            out = self.pipeline(self._to_working_size(padded), processing_resolution=0,
                                num_inference_steps=steps or self.default_steps, ensemble_size=1,
                                match_input_resolution=False, generator=generator, output_type="pt")
            normals = self._to_size(out.prediction.float(), padded.shape[-2:])
            results.append(normals[..., top:top + height, left:left + width].to(images.device))
            if progress is not None:
                progress(index + 1, len(images))
        return torch.cat(results)

    # The pipeline's own resizing (to its processing resolution and back) runs in the pipeline's dtype, and
    # antialiased resizing has no bf16 kernel on the CPU: the same steps with diffusers' own functions, in
    # float32, around a pipeline that then runs at the size it is given.
    def _to_working_size(self, picture: torch.Tensor) -> torch.Tensor:
        from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor

        resolution = self.pipeline.default_processing_resolution or 0
        return MarigoldImageProcessor.resize_to_max_edge(picture, resolution, "bilinear") if resolution > 0 else picture

    def _to_size(self, normals: torch.Tensor, size) -> torch.Tensor:
        from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor

        return self.pipeline.normalize_normals(MarigoldImageProcessor.resize_antialias(normals, tuple(size), "bilinear",
                                                                                      is_aa=False))


FP16_VARIANT = "fp16"


def weights_variant(model_dir: str) -> str | None:
    """"fp16" for a folder holding only the fp16 copies of some weights (kijai/ComfyUI-Marigold downloads
    prs-eth/marigold-normals-v1-1 into models/diffusers/ that way); None when every weighted component has
    its full-precision file."""
    for component in WEIGHTED_COMPONENTS:
        weights = glob.glob(os.path.join(model_dir, component, "*.safetensors"))
        if weights and all(w.endswith(f".{FP16_VARIANT}.safetensors") for w in weights):
            return FP16_VARIANT
    return None


def check_normals_folder(model_dir: str) -> None:
    """Raise MissingModelFile / WrongModelFile unless `model_dir` is a complete Marigold normals folder."""
    name = os.path.basename(os.path.normpath(model_dir))
    if not os.path.isdir(model_dir):
        raise MissingModelFile(missing_message(name, FOLDER, [os.path.dirname(os.path.abspath(model_dir))]))
    index = read_json_object(os.path.join(model_dir, "model_index.json"))
    if index is None or index.get("_class_name") != PIPELINE_CLASS:
        found = "no readable model_index.json" if index is None else f"_class_name {index.get('_class_name')!r}"
        raise WrongModelFile(
            f"DiffBody: '{model_dir}' is not a Marigold normals folder: expected a diffusers model_index.json "
            f"with _class_name \"{PIPELINE_CLASS}\" (prs-eth/marigold-normals-v1-1), found {found}.")
    absent = [c for c in COMPONENTS if not os.path.isdir(os.path.join(model_dir, c))]
    unweighted = [c for c in WEIGHTED_COMPONENTS if c not in absent
                  and not glob.glob(os.path.join(model_dir, c, "*.safetensors"))]
    if absent or unweighted:
        problems = [f"missing {', '.join(absent)}"] if absent else []
        problems += [f"no .safetensors weights in {', '.join(unweighted)}"] if unweighted else []
        raise MissingModelFile(f"DiffBody: the Marigold folder '{model_dir}' is incomplete ({'; '.join(problems)}). "
                               "Download the whole folder from https://huggingface.co/prs-eth/marigold-normals-v1-1.")
