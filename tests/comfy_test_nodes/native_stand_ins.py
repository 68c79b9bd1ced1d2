"""Stand-ins for ComfyUI's own Load Checkpoint and Load CLIP Vision, so the bundled workflows run
unchanged on the tiny test models (tests/workflow_tools.py swaps the class_type, nothing else).

ComfyUI's loaders recognise SD 2.1, SDXL and CLIP ViT-H only at their real sizes. These nodes take the
same inputs (the file name as a STRING, so any catalogue name validates) and return the same output
types, built from the tiny models the tiny-weights factory writes:

- `TestOnlyCheckpointLoaderSimple` (ckpt_name -> MODEL, CLIP, VAE): the catalogue's SD 2.1-base file
  name gives the tiny SD 2.1, its SDXL base file name the tiny SDXL; any other name is refused.
  MODEL is built by ComfyUI itself (model detection, supported_models, ModelPatcher) from the tiny UNet
  in the original LDM layout. CLIP is ComfyUI's own `comfy.sd.CLIP` class around the tiny text encoders:
  ComfyUI's tokenizer (weights syntax, 77-token chunks) over the tiny vocabularies, and ComfyUI's
  token-weight encoding over a module that runs the tiny transformers encoders exactly as the pack's
  diffusers adapters do (SD 2.1: the last hidden state; SDXL: both penultimate hidden states
  concatenated, the second encoder's projected pooled output). So the stock CLIP Text Encode node runs
  on it. VAE has ComfyUI's VAE interface over the tiny diffusers VAE.
- `TestOnlyCLIPVisionLoader` (clip_name -> CLIP_VISION): the tiny image encoder for the catalogue's
  CLIP ViT-H file name.
"""

from __future__ import annotations

import os

import folder_paths

from .tiny_stand_ins import TinyCLIPVision, TinyVAE

SD21_CHECKPOINT = "v2-1_512-ema-pruned.safetensors"
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
CLIP_VISION_FILE = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
LDM_PREFIX = "model.diffusion_model."


def _tiny_path(folder: str, name: str) -> str:
    return os.path.join(folder_paths.get_folder_paths(folder)[0], name)


def _require_catalogued(name: str, folder: str, accepted: tuple[str, ...]) -> None:
    """Refuse names the catalogue does not list for `folder`, or that have no tiny stand-in."""
    from comfyui_diffbody.models.files import KNOWN_FILES

    known = KNOWN_FILES.get(name)
    if known is None or known.folder != folder:
        raise ValueError(f"test stand-in: '{name}' is not a {folder} file in models/files.py's catalogue")
    if name not in accepted:
        raise ValueError(f"test stand-in: no tiny model stands in for '{name}' (known: {', '.join(accepted)})")


# -- MODEL ---------------------------------------------------------------------------------------------

def _patcher(model):
    import comfy.model_management
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def _native_model(state_dict: dict, config_class, **config_overrides):
    """ComfyUI's BaseModel from an LDM-layout UNet state dict, configured as its checkpoint loader does
    (detect_unet_config) with the given supported_models class (its real-size matching is what the tiny
    sizes fail, so the class is named here instead)."""
    import comfy.model_detection

    unet_config = comfy.model_detection.detect_unet_config(state_dict, LDM_PREFIX)
    model_config = config_class(unet_config)
    model_config.unet_config.update(config_overrides)
    model = model_config.get_model(state_dict, LDM_PREFIX)
    model.load_model_weights(state_dict, LDM_PREFIX)
    return _patcher(model)


def _sd21_model():
    """A tiny SD 2.x MODEL (eps prediction, 1024-wide context in the real one, 32 here). Nothing in the
    bundled workflows samples with it (stage 1 has its own UNet); it is a working MODEL all the same. Its
    weights are a tiny SD-2.1-layout UNet built here with 32 norm groups and 16-wide heads, the only
    layout ComfyUI's UNet class takes at this size (it always normalises with 32 groups)."""
    import dataclasses

    import comfy.supported_models
    from comfyui_diffbody.testing.tiny.stage1 import build_tiny_sd_unet, ldm_unet_state_dict, tiny_config

    config = dataclasses.replace(tiny_config(), norm_num_groups=32)
    head_width = config.block_out_channels[0] // config.attention_head_dim[0]
    unet = build_tiny_sd_unet(seed=0, config=config)
    return _native_model(ldm_unet_state_dict(unet), comfy.supported_models.SD20, num_head_channels=head_width)


def _sdxl_model():
    import comfy.supported_models
    import comfy.utils
    from comfyui_diffbody.testing.tiny import TINY_SDXL_UNET_FILE

    state_dict = comfy.utils.load_torch_file(_tiny_path("checkpoints", TINY_SDXL_UNET_FILE))
    return _native_model(state_dict, comfy.supported_models.SDXL)


# -- CLIP ----------------------------------------------------------------------------------------------

def _comfy_tokenizer(folder: str):
    """ComfyUI's SDTokenizer over a tiny CLIP tokenizer folder, padding with that tokenizer's own pad
    token (as the pack's diffusers adapters pad), 77 tokens per chunk."""
    from comfy.sd1_clip import SDTokenizer
    from transformers import CLIPTokenizer

    pad_token = CLIPTokenizer.from_pretrained(folder, local_files_only=True).pad_token_id
    return SDTokenizer(tokenizer_path=folder, max_length=77, pad_token=pad_token, embedding_directory=None)


class TinyTokenizer:
    """ComfyUI's tokenizer interface (tokenize_with_weights) over one SDTokenizer per text encoder."""

    def __init__(self, tokenizers: dict):
        self.tokenizers = tokenizers

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs):
        return {key: tokenizer.tokenize_with_weights(text, return_word_ids, **kwargs)
                for key, tokenizer in self.tokenizers.items()}

    def untokenize(self, token_weight_pair):
        key = next(iter(self.tokenizers))
        return self.tokenizers[key].untokenize(token_weight_pair)

    def state_dict(self):
        return {}


def _text_encoder_module(parts: dict, hidden_layer: str):
    """An nn.Module holding the tiny transformers encoders (so a ModelPatcher can load and offload it)
    with ComfyUI's encoder interface: `encode_token_weights({key: chunks})` -> (context, pooled), each
    encoder's prompt weights applied by ComfyUI's own ClipTokenWeightEncoder. `parts`: tokenizer key ->
    (encoder, special tokens, name of the output holding the pooled embedding or None)."""
    import torch
    from comfy.sd1_clip import ClipTokenWeightEncoder

    class OneEncoder(torch.nn.Module, ClipTokenWeightEncoder):
        def __init__(self, encoder, special_tokens, pooled_output):
            super().__init__()
            self.transformer = encoder
            self.special_tokens = special_tokens
            self.pooled_output = pooled_output

        def encode(self, token_lists):
            ids = torch.tensor(token_lists, dtype=torch.long, device=next(self.transformer.parameters()).device)
            with torch.no_grad():
                out = self.transformer(ids, output_hidden_states=True)
            hidden = out.last_hidden_state if hidden_layer == "last" else out.hidden_states[-2]
            pooled = getattr(out, self.pooled_output).float() if self.pooled_output else None
            return hidden.float(), pooled

    class TinyTextEncoders(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoders = torch.nn.ModuleDict({key: OneEncoder(*part) for key, part in parts.items()})

        def reset_clip_options(self):
            pass

        def set_clip_options(self, options):
            # Clip skip (CLIP Set Last Layer) and unprojected pooling are not modelled by the tiny
            # encoders: refuse them rather than encode something else.
            raise NotImplementedError(f"test stand-in CLIP: clip options {options} are not supported")

        def encode_token_weights(self, token_weight_pairs):
            contexts, pooled = [], None
            for key, encoder in self.encoders.items():
                context, encoder_pooled = encoder.encode_token_weights(token_weight_pairs[key])
                contexts.append(context)
                pooled = encoder_pooled if encoder_pooled is not None else pooled
            return torch.cat(contexts, dim=-1), pooled

    return TinyTextEncoders()


def _native_clip(tokenizers: dict, encoders: list, pooled_outputs: list, hidden_layer: str):
    """ComfyUI's CLIP class (clone, tokenize, encode_from_tokens(_scheduled), hooks) around the tiny parts."""
    import comfy.hooks
    import comfy.sd

    parts = {key: (encoder, {"start": t.start_token, "end": t.end_token, "pad": t.pad_token}, pooled)
             for (key, t), encoder, pooled in zip(tokenizers.items(), encoders, pooled_outputs)}
    module = _text_encoder_module(parts, hidden_layer)
    clip = comfy.sd.CLIP(no_init=True)  # the attributes its __init__ would set, for the tiny parts
    clip.cond_stage_model = module
    clip.tokenizer = TinyTokenizer(tokenizers)
    clip.patcher = _patcher(module)
    clip.patcher.hook_mode = comfy.hooks.EnumHookMode.MinVram
    clip.patcher.is_clip = True
    clip.apply_hooks_to_conds = None
    clip.layer_idx = None
    clip.use_clip_schedule = False
    clip.tokenizer_options = {}
    return clip


def _sd21_clip():
    from comfyui_diffbody.testing.tiny import TINY_SD21_NAME
    from transformers import CLIPTextModel

    folder = _tiny_path("diffusers", TINY_SD21_NAME)
    encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True,
                                            use_safetensors=True).eval()
    # SD 2.1's context is CLIPTextModel's last hidden state (see models/sd21_components.py).
    return _native_clip({"h": _comfy_tokenizer(os.path.join(folder, "tokenizer"))}, [encoder], ["pooler_output"],
                        "last")


def _sdxl_clip():
    from comfyui_diffbody.testing.tiny import TINY_SDXL_NAME
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = _tiny_path("diffusers", TINY_SDXL_NAME)
    kw = dict(local_files_only=True, use_safetensors=True)
    encoders = [CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **kw).eval(),
                CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2", **kw).eval()]
    tokenizers = {"l": _comfy_tokenizer(os.path.join(folder, "tokenizer")),
                  "g": _comfy_tokenizer(os.path.join(folder, "tokenizer_2"))}
    # SDXL: penultimate hidden states of both encoders side by side; pooled = the second's text_embeds
    # (models/sdxl_components.py's SDXLTextEncoders).
    return _native_clip(tokenizers, encoders, [None, "text_embeds"], "penultimate")


# -- VAE -----------------------------------------------------------------------------------------------

def _sd21_vae():
    from comfyui_diffbody.models.sd21_components import load_sd21_components
    from comfyui_diffbody.testing.tiny import TINY_SD21_NAME

    return TinyVAE(load_sd21_components(_tiny_path("diffusers", TINY_SD21_NAME)).vae)


def _sdxl_vae():
    from comfyui_diffbody.models.sd21_components import DiffusersVAE
    from comfyui_diffbody.testing.tiny import TINY_SDXL_NAME
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(_tiny_path("diffusers", TINY_SDXL_NAME), subfolder="vae",
                                        local_files_only=True, use_safetensors=True).eval()
    return TinyVAE(DiffusersVAE(vae))


CHECKPOINTS = {SD21_CHECKPOINT: (_sd21_model, _sd21_clip, _sd21_vae),
               SDXL_CHECKPOINT: (_sdxl_model, _sdxl_clip, _sdxl_vae)}


class CheckpointLoaderSimple:
    """Load Checkpoint's inputs and outputs over the tiny SD 2.1 / SDXL."""

    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": ("STRING", {"default": SDXL_CHECKPOINT})}}

    def load_checkpoint(self, ckpt_name: str):
        _require_catalogued(ckpt_name, "checkpoints", tuple(CHECKPOINTS))
        return tuple(build() for build in CHECKPOINTS[ckpt_name])


class CLIPVisionLoader:
    """Load CLIP Vision's inputs and outputs over the tiny image encoder."""

    CATEGORY = "testing"
    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load_clip"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": ("STRING", {"default": CLIP_VISION_FILE})}}

    def load_clip(self, clip_name: str):
        from comfyui_diffbody.models.sdxl_components import load_clip_vision
        from comfyui_diffbody.testing.tiny import TINY_CLIP_VISION_FILE
        from comfyui_diffbody.testing.tiny.stage2 import tiny_clip_vision_kwargs

        _require_catalogued(clip_name, "clip_vision", (CLIP_VISION_FILE,))
        return (TinyCLIPVision(load_clip_vision(_tiny_path("clip_vision", TINY_CLIP_VISION_FILE),
                                                config=tiny_clip_vision_kwargs())),)


NODE_CLASS_MAPPINGS = {
    "TestOnlyCheckpointLoaderSimple": CheckpointLoaderSimple,
    "TestOnlyCLIPVisionLoader": CLIPVisionLoader,
}
