"""A tiny Stable Diffusion 2.1-base folder (the parts stage 1 borrows), in diffusers' layout, built offline.

The real folder (stabilityai/stable-diffusion-2-1-base) holds, among others:
- `vae/config.json` + `vae/diffusion_pytorch_model.safetensors` (AutoencoderKL, 4 latent channels,
  four blocks = 8x downsampling, scaling_factor 0.18215);
- `text_encoder/config.json` + `text_encoder/model.safetensors` (CLIPTextModel, 23 layers of width
  1024, gelu: OpenCLIP ViT-H/14 without its last block);
- `tokenizer/` with `vocab.json`, `merges.txt`, `tokenizer_config.json`, `special_tokens_map.json`
  (a CLIP byte-level BPE, 77 tokens, padding with "!", id 0, as OpenCLIP pads with 0);
- `scheduler/scheduler_config.json` (a PNDMScheduler on SD's training schedule) and `unet/`: those are
  written by testing/tiny/stage1.py (`write_tiny_sd21_diffusers`), not here.
We write the same files with the same key layout, only narrower: 4 VAE blocks of 8-16 channels (the
8x factor is kept, the pipeline depends on it), a 2-layer text encoder of width `context_dim`
(default 32, the tiny joint UNet's cross-attention width), a byte-level vocabulary plus a few merges.
Nothing is downloaded.
"""

from __future__ import annotations

import json
import os

SCALING_FACTOR = 0.18215
MAX_TOKENS = 77
# Each merge joins two tokens already in the vocabulary (byte characters or earlier merges).
_MERGES = ("t h", "th e</w>", "a n", "an d</w>", "i n", "in g</w>", "o n</w>", "e r", "p er", "per s",
           "pers on</w>", "s h", "sh i", "shi r", "shir t</w>", "m a", "ma n</w>")


def write_tiny_sd21_components(folder: str, *, context_dim: int = 32, seed: int = 0) -> str:
    """Write tiny vae/, text_encoder/ and tokenizer/ of an SD 2.1-base folder into `folder`; return it."""
    import torch

    os.makedirs(folder, exist_ok=True)
    vocab = write_tiny_clip_tokenizer(os.path.join(folder, "tokenizer"))
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(seed)
        vae, text_encoder = _tiny_vae(), _tiny_text_encoder(vocab, context_dim)
    vae.save_pretrained(os.path.join(folder, "vae"), safe_serialization=True)
    write_text_encoder(text_encoder, os.path.join(folder, "text_encoder"))
    return folder


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, scaling_factor=SCALING_FACTOR).eval()


def _tiny_text_encoder(vocab: dict[str, int], context_dim: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=context_dim, intermediate_size=2 * context_dim, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, hidden_act="gelu", projection_dim=context_dim,
        pad_token_id=vocab["!"], bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"])
    return CLIPTextModel(config).eval()


def write_text_encoder(model, directory: str) -> None:
    """config.json + model.safetensors with the real file's key names (`text_model.embeddings...`):
    transformers 5 saves CLIPTextModel without the `text_model.` prefix and adds it back on load, but
    the public SD 2.1 file has it, and that is what users load."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    model.config.save_pretrained(directory)
    state = {key if key.startswith("text_model.") else f"text_model.{key}": value.contiguous()
             for key, value in model.state_dict().items()}
    save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})


def byte_alphabet() -> list[str]:
    """CLIP's (GPT-2's) printable stand-ins for the 256 byte values, in its vocabulary order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def write_tiny_clip_tokenizer(directory: str) -> dict[str, int]:
    """A CLIP byte-level BPE over the 256 byte characters plus a few merges (vocab.json, merges.txt and
    SD 2.x's tokenizer configs) in `directory`; return its vocabulary."""
    alphabet = byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + [m.replace(" ", "") for m in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    os.makedirs(directory, exist_ok=True)
    _write_json(os.path.join(directory, "vocab.json"), vocab)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(_MERGES) + "\n")
    write_tokenizer_config(directory)
    return vocab


def write_tokenizer_config(directory: str) -> None:
    """SD 2.x's `special_tokens_map.json` and `tokenizer_config.json` (CLIPTokenizer, 77 tokens, padded
    with "!") beside a `vocab.json` and `merges.txt`."""
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "!"}
    _write_json(os.path.join(directory, "special_tokens_map.json"), special)
    _write_json(os.path.join(directory, "tokenizer_config.json"),
                {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_TOKENS,
                 "do_lower_case": True, "errors": "replace", "add_prefix_space": False})


def _write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
