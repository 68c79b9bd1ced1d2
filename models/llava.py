"""LLaVA 1.5 (transformers layout, e.g. `llava-hf/llava-1.5-7b-hf`): load a local folder, never the hub.

The folder is what `huggingface-cli download llava-hf/llava-1.5-7b-hf` leaves: `config.json`
(model_type "llava"), sharded safetensors with their index, the tokenizer, `preprocessor_config.json`
and `processor_config.json`. It is checked before transformers sees it, so a wrong or half-downloaded
folder gets a message naming the folder and what is missing rather than a transformers traceback.

4-bit and 8-bit weights (as DiffBIR and SUPIR run LLaVA, to fit beside Stable Diffusion) use
bitsandbytes, which needs an NVIDIA GPU.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os

import torch

from .devices import concrete_dtype
from .errors import MissingDependency, MissingModelFile, WrongModelFile
from .files import missing_message
from .loading import check_all_weights_loaded

QUANTIZATIONS = ("none", "8bit", "4bit")
WEIGHTS_INDEX = "model.safetensors.index.json"
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "tokenizer_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def load_llava(model_dir: str, *, dtype: str = "auto", quantization: str = "none", device: str = "cpu"):
    """Load a local LLaVA folder -> (LlavaForConditionalGeneration in eval mode on `device`, processor).

    dtype: "auto" is resolved for `device` (see `concrete_dtype`); to load on the CPU for a GPU run
    later, pass `concrete_dtype(dtype, gpu)` instead.
    quantization: "8bit"/"4bit" need bitsandbytes and a CUDA device (else MissingDependency).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    target = torch.device(device)
    torch_dtype = getattr(torch, concrete_dtype(dtype, target))
    check_llava_folder(model_dir)
    check_quantization_support(quantization, target)

    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    kwargs = {"local_files_only": True, "use_safetensors": True, "output_loading_info": True,
              _dtype_argument_name(): torch_dtype}
    if quantization != "none":
        kwargs["quantization_config"] = _bitsandbytes_config(quantization, torch_dtype)
        # bitsandbytes quantizes while placing the weights, so they must land on the GPU directly.
        kwargs["device_map"] = {"": target.index if target.index is not None else torch.cuda.current_device()}
    model, info = LlavaForConditionalGeneration.from_pretrained(model_dir, **kwargs)
    check_all_weights_loaded(info, model_dir, "LLaVA network")
    if quantization == "none":
        model.to(target)
    return model.eval(), processor


def check_quantization_support(quantization: str, device: torch.device) -> None:
    if quantization == "none":
        return
    if device.type != "cuda":
        raise MissingDependency(
            f"DiffBody: {quantization} LLaVA needs an NVIDIA GPU (bitsandbytes runs on CUDA only), "
            f"but the device is '{device}'. Choose quantization 'none' to caption on this device.")
    # transformers quantizes through bitsandbytes and places the weights with accelerate.
    absent = [name for name in ("bitsandbytes", "accelerate") if importlib.util.find_spec(name) is None]
    if absent:
        raise MissingDependency(
            f"DiffBody: {quantization} LLaVA needs the package(s) {', '.join(absent)}. Install them into "
            f"ComfyUI's Python with:  python -m pip install {' '.join(absent)}   (or choose quantization 'none').")


def check_llava_folder(model_dir: str) -> None:
    """Raise MissingModelFile / WrongModelFile unless `model_dir` looks like a complete LLaVA folder."""
    if not os.path.isdir(model_dir):
        name = os.path.basename(os.path.normpath(model_dir))
        raise MissingModelFile(missing_message(name, "LLM", [os.path.dirname(os.path.abspath(model_dir))]))
    config = _read_config(model_dir)
    if config is None or config.get("model_type") != "llava":
        found = "no readable config.json" if config is None else f"model_type {config.get('model_type')!r}"
        raise WrongModelFile(
            f"DiffBody: '{model_dir}' is not a LLaVA model folder: expected a config.json with "
            f"model_type \"llava\" (as in llava-hf/llava-1.5-7b-hf), found {found}.")
    missing = [f for f in PROCESSOR_FILES if not os.path.isfile(os.path.join(model_dir, f))]
    if not any(os.path.isfile(os.path.join(model_dir, f)) for f in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    if missing:
        raise WrongModelFile(
            f"DiffBody: the LLaVA folder '{model_dir}' lacks its processor files: {', '.join(missing)}. "
            "Download the whole folder from https://huggingface.co/llava-hf/llava-1.5-7b-hf "
            "(older snapshots lack processor_config.json).")
    _check_weight_files(model_dir)


def _read_config(model_dir: str) -> dict | None:
    try:
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _check_weight_files(model_dir: str) -> None:
    index_path = os.path.join(model_dir, WEIGHTS_INDEX)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            shards = sorted(set(json.load(f).get("weight_map", {}).values()))
        absent = [s for s in shards if not os.path.isfile(os.path.join(model_dir, s))]
        if absent:
            raise MissingModelFile(
                f"DiffBody: the LLaVA folder '{model_dir}' is incomplete (an interrupted download?): "
                f"missing {', '.join(absent)}. Download the missing files again.")
        return
    if glob.glob(os.path.join(model_dir, "*.safetensors")):
        return
    if glob.glob(os.path.join(model_dir, "*.bin")):
        raise WrongModelFile(
            f"DiffBody: the LLaVA folder '{model_dir}' only has pickled .bin weights; the pack loads "
            "safetensors only (pickles can run code). Download the safetensors files of llava-hf/llava-1.5-7b-hf.")
    raise MissingModelFile(f"DiffBody: the LLaVA folder '{model_dir}' has no .safetensors weights.")


def _dtype_argument_name() -> str:
    """transformers renamed `torch_dtype` to `dtype` in 4.56; older versions only know the old name."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _bitsandbytes_config(quantization: str, compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                              bnb_4bit_use_double_quant=True)
