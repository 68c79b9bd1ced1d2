"""Original single-file SDXL and SD 2.1-base checkpoints for tests/test_single_file.py and tests/test_cli.py: the
tiny diffusers folders as tiny single files written with ComfyUI's own converters, and the layout (key names and
shapes, no weights) of the released-size files from the real-size fixture factory.

ComfyUI saves a checkpoint the way these are written (comfy/supported_models.py, process_*_state_dict_for_saving):
- UNet: `model.diffusion_model.` + comfy.utils.unet_to_diffusers' key map (SDXL; SD 2.1's UNet, which no
  loader under test reads, is written with the tiny factory's own writer);
- VAE: `first_stage_model.` + comfy.diffusers_convert.convert_vae_state_dict;
- SDXL's CLIP-L: `conditioner.embedders.0.transformer.text_model.*` as transformers names it, plus the
  `position_ids` ComfyUI writes;
- OpenCLIP (SDXL's bigG, SD 2.x's ViT-H): comfy.diffusers_convert.convert_text_enc_state_dict_v20 under
  `conditioner.embedders.1.model.` / `cond_stage_model.model.`, with `logit_scale` as the released files
  carry it. SD 2.x's ViT-H gets one last block (random) and a text_projection: the released file holds the
  whole tower (24 blocks), diffusers' folder drops the last block, which SD 2.x never uses.
The tiny run also tokenizes a few prompts with ComfyUI's own SDXL and SD 2.x tokenizers (real CLIP vocabulary,
comfy/sd1_tokenizer/). ComfyUI's modules run only in those subprocesses, never in the test process.
"""

from __future__ import annotations

import json
from pathlib import Path

PROMPTS = ["a person in a red shirt", "", "A Man, WALKING; the dog's ball " * 12]

CONVERT = r'''
import json, os, sys
comfy_dir = sys.argv[1]
sys.path.insert(0, comfy_dir)
import torch
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.diffusers_convert as convert
import comfy.sdxl_clip, comfy.text_encoders.sd2_clip, comfy.utils
from comfyui_diffbody.testing.tiny.stage1 import ldm_unet_state_dict


def text_model(state_dict):
    """transformers' own keys with their text_model. prefix, whichever transformers version saved them"""
    return {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
            for k, v in state_dict.items()}


def open_clip(state_dict, prefix):
    named = {"clip.transformer." + k: v for k, v in text_model(state_dict).items()}
    converted = convert.convert_text_enc_state_dict_v20(named, "clip")
    return {prefix + k[len("clip."):]: v for k, v in converted.items()}


def sdxl_file(unet, comfy_unet_config, vae, clip_l, bigg):
    unet_map = comfy.utils.unet_to_diffusers(comfy_unet_config)
    ldm = {"model.diffusion_model." + unet_map[k]: v for k, v in unet.items()}
    ldm.update({"first_stage_model." + k: v for k, v in convert.convert_vae_state_dict(vae).items()})
    ldm.update({"conditioner.embedders.0.transformer." + k: v for k, v in text_model(clip_l).items()})
    ldm["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    ldm.update(open_clip(bigg, "conditioner.embedders.1.model."))
    ldm["conditioner.embedders.1.model.logit_scale"] = torch.tensor(4.6052)
    return ldm


def sd21_file(unet, vae, vit_h, config, generator):
    """vit_h: diffusers' text encoder (config's layers); a last block and the projection are added"""
    ldm = ldm_unet_state_dict(unet)
    ldm.update({"first_stage_model." + k: v for k, v in convert.convert_vae_state_dict(vae).items()})
    vit_h = text_model(vit_h)
    last = config["num_hidden_layers"]
    vit_h.update({k.replace("layers.0.", f"layers.{last}."): torch.randn(v.shape, generator=generator)
                  for k, v in vit_h.items() if ".layers.0." in k})
    vit_h["text_projection.weight"] = torch.randn(config["hidden_size"], config["hidden_size"], generator=generator)
    ldm.update(open_clip(vit_h, "cond_stage_model.model."))
    ldm["cond_stage_model.model.logit_scale"] = torch.tensor(4.6052)
    return ldm
'''

TINY = CONVERT + r'''
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file
from comfyui_diffbody.testing.tiny import TINY_SD21_NAME, TINY_SDXL_NAME
from comfyui_diffbody.testing.tiny.stage2 import tiny_comfy_unet_config

models, out, prompts = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
sdxl_folder = os.path.join(models, "diffusers", TINY_SDXL_NAME)
sd21_folder = os.path.join(models, "diffusers", TINY_SD21_NAME)


def weights(folder, part):
    name = "model.safetensors" if part.startswith("text_encoder") else "diffusion_pytorch_model.safetensors"
    return load_file(os.path.join(folder, part, name))


def save(state_dict, name):
    path = os.path.join(out, name)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    return path


sdxl = sdxl_file(weights(sdxl_folder, "unet"), tiny_comfy_unet_config(), weights(sdxl_folder, "vae"),
                 weights(sdxl_folder, "text_encoder"), weights(sdxl_folder, "text_encoder_2"))
with open(os.path.join(sd21_folder, "text_encoder", "config.json")) as f:
    config = json.load(f)
sd21 = sd21_file(UNet2DConditionModel.from_pretrained(os.path.join(sd21_folder, "unet")), weights(sd21_folder, "vae"),
                 weights(sd21_folder, "text_encoder"), config, torch.Generator().manual_seed(7))
result = {"sdxl": save(sdxl, "tiny_sd_xl_base.safetensors"), "sd21": save(sd21, "tiny_v2-1_512.safetensors"),
          "tokens": {}}
xl, sd2 = comfy.sdxl_clip.SDXLTokenizer(), comfy.text_encoders.sd2_clip.SD2Tokenizer()
for prompt in prompts:
    pairs = {**xl.tokenize_with_weights(prompt), **sd2.tokenize_with_weights(prompt)}
    result["tokens"][prompt] = {clip: [token for token, _ in pairs[clip][0]] for clip in ("l", "g", "h")}
print("RESULT " + json.dumps(result))
'''

# The released files' layout as the real-size fixture factory writes them, ComfyUI saving its own SDXL and SD 2.x
# models (comfyui_diffbody.testing.realsize.checkpoints): key names, shapes and dtypes, no values.
REAL_LAYOUT = r'''
import json, sys
from comfyui_diffbody.testing.realsize.checkpoints import sd21_checkpoint_spec, sdxl_checkpoint_spec

comfy_dir = sys.argv[1]
shapes = lambda spec: {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in spec.items()}
print("RESULT " + json.dumps({"sdxl": shapes(sdxl_checkpoint_spec(comfy_dir)),
                              "sd21": shapes(sd21_checkpoint_spec(comfy_dir))}))
'''


def write_tiny_single_files(models_dir: Path, work: Path) -> dict:
    """{"sdxl": path, "sd21": path, "tokens": {prompt: {"l"|"g"|"h": ComfyUI's 77 token ids}}}: the tiny
    folders of `models_dir` (testing.tiny.build_models_dir) as single files in `work`."""
    from comfy_harness import run_comfy_script

    return run_comfy_script(TINY, work, str(models_dir), str(work), json.dumps(PROMPTS), label="single files")


def released_layouts(work: Path) -> dict:
    """{"sdxl"|"sd21": {key: [shape, dtype]}}: the released checkpoints' layout as ComfyUI saves them (the
    real-size fixture factory's, testing/realsize/checkpoints.py)."""
    from comfy_harness import run_comfy_script

    return run_comfy_script(REAL_LAYOUT, work, label="released layouts (keys)")
