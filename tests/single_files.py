"""Tiny original single-file SDXL and SD 2.1-base checkpoints, converted from the tiny diffusers folders with
ComfyUI's own converters, for tests/test_single_file.py and tests/test_cli.py.

ComfyUI saves a checkpoint the way these are written (comfy/supported_models.py, process_*_state_dict_for_saving):
- UNet: `model.diffusion_model.` + comfy.utils.unet_to_diffusers' key map (SDXL; SD 2.1's tiny UNet, which no
  loader under test reads, is written with the tiny factory's own writer);
- VAE: `first_stage_model.` + comfy.diffusers_convert.convert_vae_state_dict;
- SDXL's CLIP-L: `conditioner.embedders.0.transformer.text_model.*` as transformers names it, plus the
  `position_ids` ComfyUI writes;
- OpenCLIP (SDXL's bigG, SD 2.x's ViT-H): comfy.diffusers_convert.convert_text_enc_state_dict_v20 under
  `conditioner.embedders.1.model.` / `cond_stage_model.model.`, with `logit_scale` as the released files
  carry it. SD 2.x's ViT-H gets one last block of its own (random) and a text_projection: the released file
  holds the whole tower, diffusers' folder drops the last block, which SD 2.x never uses.
The same subprocess tokenizes a few prompts with ComfyUI's own SDXL and SD 2.x tokenizers (real CLIP vocabulary,
comfy/sd1_tokenizer/), for the tokenizer test. ComfyUI's modules run only there, never in the test process.
"""

from __future__ import annotations

from pathlib import Path

PROMPTS = ["a person in a red shirt", "", "A Man, WALKING; the dog's ball " * 12]

SCRIPT = r'''
import json, os, sys
comfy_dir, models, out = sys.argv[1:4]
sys.path.insert(0, comfy_dir)
import torch
from safetensors.torch import load_file, save_file
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.diffusers_convert as convert
import comfy.sdxl_clip, comfy.text_encoders.sd2_clip, comfy.utils
from diffusers import UNet2DConditionModel
from comfyui_diffbody.testing.tiny import TINY_SD21_NAME, TINY_SDXL_NAME
from comfyui_diffbody.testing.tiny.stage1 import ldm_unet_state_dict
from comfyui_diffbody.testing.tiny.stage2 import tiny_comfy_unet_config

sdxl_folder = os.path.join(models, "diffusers", TINY_SDXL_NAME)
sd21_folder = os.path.join(models, "diffusers", TINY_SD21_NAME)


def weights(folder, part):
    name = "model.safetensors" if part.startswith("text_encoder") else "diffusion_pytorch_model.safetensors"
    return load_file(os.path.join(folder, part, name))


def text_model(state_dict):
    """transformers' own keys with their text_model. prefix, whichever transformers version saved them"""
    return {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
            for k, v in state_dict.items()}


def open_clip(state_dict, prefix):
    named = {"clip.transformer." + k: v for k, v in text_model(state_dict).items()}
    converted = convert.convert_text_enc_state_dict_v20(named, "clip")
    return {prefix + k[len("clip."):]: v for k, v in converted.items()}


def vae(folder):
    return {"first_stage_model." + k: v for k, v in convert.convert_vae_state_dict(weights(folder, "vae")).items()}


def save(state_dict, name):
    path = os.path.join(out, name)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    return path


unet_map = comfy.utils.unet_to_diffusers(tiny_comfy_unet_config())
sdxl = {"model.diffusion_model." + unet_map[k]: v for k, v in weights(sdxl_folder, "unet").items()}
sdxl.update(vae(sdxl_folder))
sdxl.update({"conditioner.embedders.0.transformer." + k: v
             for k, v in text_model(weights(sdxl_folder, "text_encoder")).items()})
sdxl["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
sdxl.update(open_clip(weights(sdxl_folder, "text_encoder_2"), "conditioner.embedders.1.model."))
sdxl["conditioner.embedders.1.model.logit_scale"] = torch.tensor(4.6052)

sd21 = ldm_unet_state_dict(UNet2DConditionModel.from_pretrained(os.path.join(sd21_folder, "unet")))
sd21.update(vae(sd21_folder))
vit_h = text_model(weights(sd21_folder, "text_encoder"))
with open(os.path.join(sd21_folder, "text_encoder", "config.json")) as f:
    config = json.load(f)
generator = torch.Generator().manual_seed(7)
last = config["num_hidden_layers"]
vit_h.update({k.replace("layers.0.", f"layers.{last}."): torch.randn(v.shape, generator=generator)
              for k, v in vit_h.items() if ".layers.0." in k})
vit_h["text_projection.weight"] = torch.randn(config["projection_dim"], config["hidden_size"], generator=generator)
sd21.update(open_clip(vit_h, "cond_stage_model.model."))
sd21["cond_stage_model.model.logit_scale"] = torch.tensor(4.6052)

result = {"sdxl": save(sdxl, "tiny_sd_xl_base.safetensors"), "sd21": save(sd21, "tiny_v2-1_512.safetensors"),
          "tokens": {}}
xl, sd2 = comfy.sdxl_clip.SDXLTokenizer(), comfy.text_encoders.sd2_clip.SD2Tokenizer()
for prompt in json.loads(sys.argv[4]):
    pairs = {**xl.tokenize_with_weights(prompt), **sd2.tokenize_with_weights(prompt)}
    result["tokens"][prompt] = {clip: [token for token, _ in pairs[clip][0]] for clip in ("l", "g", "h")}
print("RESULT " + json.dumps(result))
'''


def write_tiny_single_files(models_dir: Path, work: Path) -> dict:
    """{"sdxl": path, "sd21": path, "tokens": {prompt: {"l"|"g"|"h": ComfyUI's 77 token ids}}}: the tiny
    folders of `models_dir` (testing.tiny.build_models_dir) as single files in `work`."""
    import json

    from comfy_harness import run_comfy_script

    return run_comfy_script(SCRIPT, work, str(models_dir), str(work), json.dumps(PROMPTS), label="single files")
