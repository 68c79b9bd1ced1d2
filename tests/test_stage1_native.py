"""Cross-host test of stage 1's VAE and text encoding: what the "DiffBody Stage 1 Sampler" node gets from
ComfyUI (nodes/glue.py ComfyVAECodec over ComfyUI's own SD VAE; CONDITIONING from ComfyUI's own SD 2.x CLIP
tokenizer and text model) against what the pack's diffusers path uses (models/sd21_components.py
DiffusersVAE / DiffusersTextEncoder: the CLI and training), on the same tiny weights.

ComfyUI's side is built from ComfyUI's modules, not from the pack's code: `comfy.sd.VAE` (its
`comfy.ldm.models.autoencoder.AutoencoderKL`, fed the diffusers state dict as ComfyUI converts it) and
`comfy.sd1_clip.SDTokenizer` + `SDClipModel` configured as `comfy.text_encoders.sd2_clip` configures SD 2.x
(penultimate layer, pad with id 0, no end-padding) over the tiny tokenizer and the tiny text encoder
plus one last block, as ComfyUI holds the whole OpenCLIP tower where diffusers drops its last block.
ComfyUI's VAE normalises with GroupNorm(32), so the VAE here is a tiny one of 32 channels (the
pack's usual tiny VAE has 8-16 and cannot be built by ComfyUI). Everything runs in a subprocess, so
ComfyUI's modules never enter the pytest process.

The negative test feeds the same detector crossed wires (SDXL's latent scale instead of SD's, BGR pixels,
ComfyUI's last layer instead of the penultimate one) and checks that it reports each.
"""

from __future__ import annotations


import pytest

TOLERANCE = 1e-4  # float32 on the CPU; the measured differences are printed

CHECK = r'''
import json, os, sys
comfy_dir, work = sys.argv[1:3]
sys.path.insert(0, comfy_dir)
import numpy as np
import torch
torch.set_num_threads(1)
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.diffusers_convert, comfy.sd, comfy.sd1_clip
from diffusers import AutoencoderKL
from PIL import Image
from skimage import data
from transformers import CLIPTokenizer
from comfyui_diffbody.models.sd21_components import DiffusersVAE, load_sd21_components
from comfyui_diffbody.nodes import glue
from comfyui_diffbody.testing.tiny.sd21_components import write_tiny_sd21_components

out = {}
# -- VAE --------------------------------------------------------------------------------------------------
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
                        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, scaling_factor=0.18215).eval()
    for p in vae.parameters():  # move the norms off 1/0 so every weight matters
        p.data += 0.05 * torch.randn_like(p)
sd = {k: v.clone() for k, v in vae.state_dict().items()}
ddconfig = {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
comfy_vae = comfy.sd.VAE(sd=sd, config={"params": {"embed_dim": 4, "ddconfig": ddconfig}})
converted = comfy.diffusers_convert.convert_vae_state_dict(dict(sd))
missing, unexpected = comfy_vae.first_stage_model.load_state_dict(converted, strict=False)
out["vae_missing"], out["vae_unexpected"] = list(missing), list(unexpected)
out["vae_comfy_class"] = type(comfy_vae.first_stage_model).__module__ + "." + type(comfy_vae.first_stage_model).__name__

photo = np.asarray(Image.fromarray(data.astronaut()).resize((96, 64), Image.LANCZOS), np.float32) / 255.0
images = torch.from_numpy(photo).permute(2, 0, 1)[None]  # (1, 3, 64, 96)
pack, node = DiffusersVAE(vae), glue.ComfyVAECodec(comfy_vae)
with torch.no_grad():
    pack_latents, node_latents = pack.encode(images), node.encode(images)
    out["latent_shape"] = [list(pack_latents.shape), list(node_latents.shape)]
    out["encode"] = float((pack_latents - node_latents).abs().max())
    out["encode_scale"] = float(pack_latents.abs().mean())
    crossed = {"encode_sdxl_scale": node_latents / 0.18215 * 0.13025, "encode_bgr": node.encode(images.flip(1))}
    out.update({k: float((pack_latents - v).abs().max()) for k, v in crossed.items()})
    pack_images, node_images = pack.decode(pack_latents), node.decode(pack_latents)
    out["image_shape"] = [list(pack_images.shape), list(node_images.shape)]
    out["decode"] = float((pack_images - node_images).abs().max())
    out["decode_bgr"] = float((pack_images - node_images.flip(1)).abs().max())
    out["decode_range"] = [float(pack_images.min()), float(pack_images.max()), float(pack_images.std())]

# -- CLIP text encoder ------------------------------------------------------------------------------------
folder = write_tiny_sd21_components(os.path.join(work, "sd21"))
# SD 2.x's diffusers text encoder is OpenCLIP ViT-H without its last block (23 of 24 layers) and stage 1 takes its
# last layer; ComfyUI loads the whole OpenCLIP text tower and takes its penultimate layer. So ComfyUI's model here
# has one layer more than the tiny diffusers encoder: the same weights, plus a last block of its own.
from transformers import CLIPTextConfig, CLIPTextModel
from safetensors.torch import load_file
config = CLIPTextConfig.from_pretrained(os.path.join(folder, "text_encoder"))
layers = config.num_hidden_layers
config.num_hidden_layers = layers + 1
comfy_config = os.path.join(work, "comfy_clip_config.json")
config.to_json_file(comfy_config)
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(1)
    extra_block = {f"text_model.{k}" if not k.startswith("text_model.") else k: v
                   for k, v in CLIPTextModel(config).state_dict().items() if f"layers.{layers}." in k}
components = load_sd21_components(folder)
hf_tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
with open(os.path.join(folder, "text_encoder", "config.json")) as f:
    width = json.load(f)["hidden_size"]
tokenizer = comfy.sd1_clip.SDTokenizer(os.path.join(folder, "tokenizer"), pad_with_end=False, embedding_size=width,
                                       embedding_key="clip_h")


def comfy_clip(layer, layer_idx):
    """SDClipModel as comfy.text_encoders.sd2_clip.SD2ClipHModel builds it, over the tiny config."""
    model = comfy.sd1_clip.SDClipModel(
        layer=layer, layer_idx=layer_idx, textmodel_json_config=comfy_config,
        dtype=torch.float32, special_tokens={"start": hf_tokenizer.bos_token_id, "end": hf_tokenizer.eos_token_id,
                                             "pad": 0}, return_projected_pooled=False)
    from safetensors.torch import load_file
    weights = {**load_file(os.path.join(folder, "text_encoder", "model.safetensors")), **extra_block}
    # ComfyUI's CLIPTextModel always has CLIP's 49408-row embedding: the tiny vocabulary's rows, then zeros
    # (never indexed: every tiny token id is below the tiny vocabulary's size)
    key = "text_model.embeddings.token_embedding.weight"
    rows = model.transformer.state_dict()[key].shape[0]
    weights[key] = torch.cat([weights[key], weights[key].new_zeros(rows - weights[key].shape[0], weights[key].shape[1])])
    missing, unexpected = model.load_sd(weights)
    return model, [k for k in missing if "text_projection" not in k], list(unexpected)


penultimate, out["clip_missing"], out["clip_unexpected"] = comfy_clip("hidden", -2)
last, _, _ = comfy_clip("last", None)
out["pad_id"] = hf_tokenizer.convert_tokens_to_ids("!")
out["clip"], out["clip_last_layer"], out["clip_shapes"] = {}, {}, {}
for prompt in ["a person in a red shirt", "", "the man and the person, in the shirt " * 3]:
    tokens = tokenizer.tokenize_with_weights(prompt)
    with torch.no_grad():
        ours = components.text_encoder.encode([prompt])
        theirs = penultimate.encode_token_weights(tokens)[0]
        wrong = last.encode_token_weights(tokens)[0]
    out["clip_shapes"][prompt] = [list(ours.shape), list(theirs.shape)]
    out["clip"][prompt] = float((ours - theirs).abs().max()) if ours.shape == theirs.shape else None
    out["clip_last_layer"][prompt] = float((ours - wrong).abs().max()) if ours.shape == wrong.shape else None
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    from comfy_harness import run_comfy_script

    work = tmp_path_factory.mktemp("stage1_native")
    return run_comfy_script(CHECK, work, work)


def mismatches(values: dict[str, float | None]) -> dict[str, float | None]:
    """The detector: every comparison over the tolerance (None: the shapes differ)."""
    return {k: v for k, v in values.items() if v is None or v > TOLERANCE}


def test_comfyuis_own_vae_loads_every_weight(native):
    assert native["vae_comfy_class"] == "comfy.ldm.models.autoencoder.AutoencoderKL"
    assert native["vae_missing"] == [] and native["vae_unexpected"] == []


def test_stage1_vae_encode_and_decode_equal_comfyuis(native):
    assert native["latent_shape"] == [[1, 4, 8, 12]] * 2 and native["image_shape"] == [[1, 3, 64, 96]] * 2
    assert native["encode_scale"] > 0.01 and native["decode_range"][2] > 0.01  # not trivially zero / flat
    assert mismatches({k: native[k] for k in ("encode", "decode")}) == {}


def test_stage1_text_encoding_equals_comfyuis_sd2_clip(native):
    assert native["pad_id"] == 0  # SD 2.x pads with id 0, which the tiny vocabulary gives to "!"
    assert native["clip_missing"] == [] and native["clip_unexpected"] == []
    assert all(a == b for a, b in native["clip_shapes"].values())
    assert mismatches(native["clip"]) == {}


def test_the_detector_catches_crossed_wires(native):
    crossed = {k: native[k] for k in ("encode_sdxl_scale", "encode_bgr", "decode_bgr")}
    assert set(mismatches(crossed)) == set(crossed)
    assert set(mismatches(native["clip_last_layer"])) == set(native["clip_last_layer"])
