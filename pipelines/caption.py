"""Stage 0 caption `p = LLaVA(I_ir)`: a short description of the person for the diffusion text encoder.

Images are captioned one at a time: a caption then never depends on which other images share the
batch (no padding, its own seeded random stream), and progress/cancel can act between images.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable

import torch

from .image import check_bchw, chw_to_uint8
from .prompts import DEFAULT_CAPTION_PROMPT as DEFAULT_PROMPT

# LLaVA 1.5's conversation format, for folders saved before llava-hf added a chat template.
LLAVA15_CONVERSATION = "USER: <image>\n{prompt} ASSISTANT:"
COMBINE_MODES = ("append", "override", "prepend")

ProgressCallback = Callable[[int, int], None]


class LlavaCaptioner:
    """A loaded LLaVA and its processor as one object: what the node hands to ComfyUI's memory
    management (`.to(device)` to load/offload, `size_bytes()` for its budget)."""

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor

    @classmethod
    def load(cls, model_dir: str, *, dtype: str = "auto", quantization: str = "none",
             device: str = "cpu") -> "LlavaCaptioner":
        from ..models.llava import load_llava

        return cls(*load_llava(model_dir, dtype=dtype, quantization=quantization, device=device))

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def quantized(self) -> bool:
        """bitsandbytes weights: they move between devices (bitsandbytes >= 0.48 for 8-bit) but
        cannot change dtype."""
        return bool(getattr(self.model, "is_quantized", False))

    def to(self, device) -> "LlavaCaptioner":
        self.model.to(device)  # the processor holds no tensors
        return self

    def size_bytes(self) -> int:
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)

    def caption(self, images: torch.Tensor, **kwargs) -> list[str]:
        """`caption_images` with this model; same keyword arguments."""
        return caption_images(self.model, self.processor, images, **kwargs)


def caption_images(model, processor, images: torch.Tensor, *, prompt: str = DEFAULT_PROMPT,
                   max_new_tokens: int = 77, seed: int = 0, do_sample: bool = False,
                   device=None, progress: ProgressCallback | None = None) -> list[str]:
    """(B,3,H,W) float images in 0..1 -> B cleaned captions.

    device: where the inputs go; defaults to the model's device. The same image, prompt and seed
    give the same caption (sampling draws from a private, seeded random stream). `progress(done,
    total)` is called after each image; an exception it raises (a cancel) stops the run.
    """
    check_bchw(images, "the images to caption", floats_only=False)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    target = torch.device(device) if device is not None else model.device
    text = conversation_text(processor, prompt)
    captions = []
    for index, image in enumerate(images):
        inputs = _model_inputs(processor, image, text, target, model.dtype)
        with _seeded_rng(seed):
            generated = _generate(model, processor, inputs, max_new_tokens, do_sample)
        captions.append(clean_caption(processor.tokenizer.decode(generated, skip_special_tokens=True)))
        if progress is not None:
            progress(index + 1, len(images))
    return captions


def conversation_text(processor, prompt: str) -> str:
    """The prompt as one user turn holding the image, ending where the assistant's answer starts."""
    if not getattr(processor, "chat_template", None):
        return LLAVA15_CONVERSATION.format(prompt=prompt.strip())
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.strip()}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


def clean_caption(text: str) -> str:
    """Generated text -> one line: no chat markers, no run-on next turn, no half-finished last sentence."""
    text = text.split("USER:")[0].replace("ASSISTANT:", " ")  # LLaVA sometimes starts the next turn itself
    text = " ".join(text.split()).strip(" \"'")
    return _drop_unfinished_sentence(text)


def combine_caption(generated: str, user_text: str, mode: str = "append") -> str:
    """The node's caption: LLaVA's, the user's text instead of it ("override"), or both joined
    ("append": LLaVA's first, "prepend": the user's first). Empty user text leaves LLaVA's caption."""
    if mode not in COMBINE_MODES:
        raise ValueError(f"mode must be one of {COMBINE_MODES}, got {mode!r}")
    generated, user_text = generated.strip(), (user_text or "").strip()
    if not user_text:
        return generated
    if mode == "override" or not generated:
        return user_text
    first, second = (generated, user_text) if mode == "append" else (user_text, generated)
    separator = " " if first[-1] in ".,;:!?" else ", "
    return first + separator + second


def _model_inputs(processor, image: torch.Tensor, text: str, device: torch.device, dtype: torch.dtype) -> dict:
    from PIL import Image

    square = Image.fromarray(chw_to_uint8(_pad_to_square(image, processor.image_processor.image_mean)))
    inputs = processor(images=square, text=text, return_tensors="pt")
    moved = {k: v.to(device) for k, v in inputs.items()}
    moved["pixel_values"] = moved["pixel_values"].to(dtype)
    return moved


def _pad_to_square(image: torch.Tensor, fill: list[float]) -> torch.Tensor:
    """(3,H,W) -> (3,S,S), centred on the mean colour, as LLaVA 1.5 was trained ("pad" aspect mode).
    The CLIP processor centre-crops to a square otherwise, cutting head or feet off a full-body photo."""
    _, height, width = image.shape
    side = max(height, width)
    canvas = torch.tensor(fill, dtype=torch.float32, device=image.device).view(3, 1, 1).repeat(1, side, side)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[:, top:top + height, left:left + width] = image.float().clamp(0, 1)
    return canvas


def _generate(model, processor, inputs: dict, max_new_tokens: int, do_sample: bool) -> torch.Tensor:
    """The new tokens only (generate returns the prompt followed by the answer)."""
    pad_id = model.generation_config.pad_token_id
    if pad_id is None:
        pad_id = processor.tokenizer.eos_token_id
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad_id)
    return output[0, inputs["input_ids"].shape[1]:].cpu()


@contextmanager
def _seeded_rng(seed: int):
    """torch.manual_seed(seed) inside; the caller's CPU and CUDA random states are restored after."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _drop_unfinished_sentence(text: str) -> str:
    if not text or text[-1] in ".!?":
        return text
    ends = list(re.finditer(r"[.!?](?=\s)", text))
    return text[:ends[-1].end()] if ends else text
