"""DiffBIR's SwinIR cleaner (DiffBody stage 0), loaded and run through spandrel.

The network is a SwinIR (embed_dim 180, 8 residual groups of 6 blocks, window 8) whose input goes
through an 8x PixelUnshuffle before `conv_first` and whose "nearest+conv" upsampler brings it back up
by 8, so it restores at x1. spandrel >= 0.4.2 recognises that layout (tag `8unshuf`); older releases
build it wrongly. Inputs must be multiples of 64 px (8x unshuffle times window 8); fp16 is not
supported, bf16 is.

Files: `general_swinir_v1.ckpt` (DiffBIR v1: `{"state_dict": {"module." + key: tensor}}`) and
`realesrgan_s4_swinir_100k.pth` (DiffBIR v2.1), or the same weights as .safetensors. In DiffBIR's own
layout the first conv is `conv_first.1.*` (index 0 is the PixelUnshuffle).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from .errors import MissingDependency, MissingModelFile, WrongModelFile
from .loading import read_weights

if TYPE_CHECKING:
    from spandrel import ImageModelDescriptor

MIN_SPANDREL = "0.4.2"
UNSHUFFLE = 8
EXPECTED = ("DiffBIR's SwinIR cleaner (general_swinir_v1.ckpt or realesrgan_s4_swinir_100k.pth): a SwinIR "
            "restoration network with an 8x pixel-unshuffle input, a 'nearest+conv' upsampler and x1 output")


def load_swinir(path: str) -> "ImageModelDescriptor":
    """Load DiffBIR's SwinIR cleaner from `path` as a spandrel ImageModelDescriptor (eval mode, CPU, float32).

    Reads the file safely (safetensors, or torch.load with weights_only=True), lets spandrel detect and
    build the network, and raises WrongModelFile if the file is anything but DiffBIR's kind of SwinIR.
    """
    descriptor = load_image_model(path, expected=EXPECTED, what="SwinIR model")
    _check_is_diffbir_cleaner(descriptor, path)
    return descriptor


ANY_IMAGE_MODEL = "an image-to-image network spandrel recognises (Real-ESRGAN, BSRGAN, SwinIR, ...)"


def load_image_model(path: str, *, expected: str = ANY_IMAGE_MODEL, what: str = "image model") -> "ImageModelDescriptor":
    """Any image-to-image network spandrel builds from `path` (the evaluation's `sr:FILE` baselines), as an
    ImageModelDescriptor (eval mode, CPU, float32); read safely, WrongModelFile for anything else."""
    if not os.path.isfile(path):
        raise MissingModelFile(f"DiffBody: {what} file '{path}' does not exist.")
    spandrel = _import_spandrel()
    state_dict = spandrel.canonicalize_state_dict(read_weights(path, expected=expected))
    _check_all_tensors(state_dict, path, expected)
    return _build_descriptor(spandrel, state_dict, path, expected).eval()


def _import_spandrel():
    try:
        import spandrel
    except ImportError as e:
        raise MissingDependency("DiffBody: the SwinIR cleaner needs spandrel: pip install 'spandrel>=0.4.2'") from e
    from packaging.version import Version  # packaging comes with transformers and huggingface_hub

    if Version(spandrel.__version__) < Version(MIN_SPANDREL):
        raise MissingDependency(
            f"DiffBody: spandrel {spandrel.__version__} builds DiffBIR's SwinIR wrongly; "
            "it needs spandrel >= 0.4.2: pip install -U 'spandrel>=0.4.2'")
    return spandrel


def _check_all_tensors(state_dict: dict, path: str, expected: str) -> None:
    if not state_dict or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WrongModelFile(
            f"DiffBody: '{os.path.basename(path)}' does not hold a network's weights.\n"
            f"Expected {expected}.\n(file: {path})")


def _build_descriptor(spandrel, state_dict: dict, path: str, expected: str) -> "ImageModelDescriptor":
    name = os.path.basename(path)
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError as e:
        raise WrongModelFile(
            f"DiffBody: '{name}' is not a network spandrel recognises.\nExpected {expected}.\n(file: {path})") from e
    except (RuntimeError, KeyError, ValueError, IndexError) as e:  # detected, but the weights do not fit
        raise WrongModelFile(
            f"DiffBody: '{name}' looks like a known network but its weights do not fit it ({e}).\n"
            f"Expected {expected}.\n(file: {path})") from e
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise WrongModelFile(
            f"DiffBody: '{name}' is a {descriptor.architecture.name} {descriptor.purpose} network.\n"
            f"Expected {expected}.\n(file: {path})")
    return descriptor


def _check_is_diffbir_cleaner(descriptor: "ImageModelDescriptor", path: str) -> None:
    name = os.path.basename(path)
    arch = descriptor.architecture
    if arch.id != "SwinIR":
        raise WrongModelFile(
            f"DiffBody: '{name}' is a {arch.name} x{descriptor.scale} {descriptor.purpose} network, "
            f"not a SwinIR.\nExpected {EXPECTED}.\n(file: {path})")
    model = descriptor.model
    found = (f"unshuffle {model.start_unshuffle}x, upsampler '{model.upsampler or 'none'}', "
             f"x{descriptor.scale}, {descriptor.input_channels} input channels")
    if (model.start_unshuffle, model.upsampler, descriptor.scale, descriptor.input_channels) != (
            UNSHUFFLE, "nearest+conv", 1, 3):
        raise WrongModelFile(
            f"DiffBody: '{name}' is a SwinIR, but not DiffBIR's cleaner ({found}).\n"
            f"Expected {EXPECTED}.\n(file: {path})")
