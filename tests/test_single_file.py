"""Original single-file SDXL and SD 2.1-base checkpoints (models/single_file.py) against the diffusers folders
they were converted from: the same networks, outputs equal bit for bit; ComfyUI's tokenizer files give ComfyUI's
own token ids; files of another layout are refused, saying what they are.

The single files are the tiny folders converted by ComfyUI's own converters (tests/single_files.py), loaded
with the tiny folders' configs. The loaders' defaults are the released models' sizes: the released layout as
ComfyUI saves it (the real-size fixture factory's, names and shapes, no weights) loads with them into networks of
the released parameter counts; the text towers' sizes are ComfyUI's own.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_diffbody.models import files
from comfyui_diffbody.models.errors import MissingModelFile, WrongModelFile
from comfyui_diffbody.models.sd21_components import load_sd21_components
from comfyui_diffbody.models.sdxl_components import load_sdxl_parts
from comfyui_diffbody.models.single_file import (SD21_CONFIGS, SDXL_CONFIGS, diffusers_folder_configs,
                                                 load_clip_tokenizers, load_sd21_single_file, load_sdxl_single_file)
from comfyui_diffbody.testing.tiny import TINY_SD21_NAME, TINY_SDXL_NAME, TINY_SDXL_UNET_FILE

PROMPTS = ["a person in a red shirt", "", "the man and the person, in the shirt " * 4]


@pytest.fixture(scope="module")
def folders(tiny_models_dir):
    return {"sdxl": str(tiny_models_dir / "diffusers" / TINY_SDXL_NAME),
            "sd21": str(tiny_models_dir / "diffusers" / TINY_SD21_NAME)}


def load_single(kind: str, path: str, folders: dict, **kwargs):
    loader, parts = {"sdxl": (load_sdxl_single_file, SDXL_CONFIGS), "sd21": (load_sd21_single_file, SD21_CONFIGS)}[kind]
    kwargs.setdefault("configs", diffusers_folder_configs(folders[kind], tuple(parts)))
    return loader(path, tokenizer_source=folders[kind], **kwargs)


def all_hidden_states(tokenizer, encoder, prompts):
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids, output_hidden_states=True)


def test_sdxl_single_file_gives_the_folders_networks(folders, tiny_single_files, one_torch_thread):
    unet_a, vae_a, text_a = load_sdxl_parts(folders["sdxl"])
    unet_b, vae_b, text_b = load_single("sdxl", tiny_single_files["sdxl"], folders)
    context_a, pooled_a = text_a.encode(PROMPTS)
    context_b, pooled_b = text_b.encode(PROMPTS)
    assert context_a.shape == (3, 77, 64) and pooled_a.shape == (3, 32)
    assert torch.equal(context_a, context_b) and torch.equal(pooled_a, pooled_b)
    for i in range(2):  # every layer of CLIP-L and of bigG, and bigG's projected text embedding
        out_a = all_hidden_states(text_a.tokenizers[i], text_a.encoders[i], PROMPTS)
        out_b = all_hidden_states(text_b.tokenizers[i], text_b.encoders[i], PROMPTS)
        assert all(torch.equal(a, b) for a, b in zip(out_a.hidden_states, out_b.hidden_states, strict=True)), i
        assert torch.equal(out_a[0], out_b[0]), i
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    conditions = {"text_embeds": pooled_a[:2], "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        noise_a = unet_a(latents, 500, context_a[:2], added_cond_kwargs=conditions).sample
        noise_b = unet_b(latents, 500, context_a[:2], added_cond_kwargs=conditions).sample
        assert noise_a.abs().mean() > 0.01 and torch.equal(noise_a, noise_b)
        images = torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1
        moments_a, moments_b = vae_a.encode(images).latent_dist, vae_b.encode(images).latent_dist
        assert torch.equal(moments_a.mean, moments_b.mean) and torch.equal(moments_a.std, moments_b.std)
        assert torch.equal(vae_a.decode(moments_a.mean).sample, vae_b.decode(moments_a.mean).sample)
    assert vae_b.config.scaling_factor == vae_a.config.scaling_factor == 0.13025
    assert next(vae_b.parameters()).dtype == torch.float32 and not unet_b.training


def test_sd21_single_file_gives_the_folders_vae_and_text_encoder(folders, tiny_single_files, one_torch_thread):
    folder, single = load_sd21_components(folders["sd21"]), load_single("sd21", tiny_single_files["sd21"], folders)
    context = folder.text_encoder.encode(PROMPTS)
    assert context.shape == (3, 77, 32)
    assert torch.equal(context, single.text_encoder.encode(PROMPTS))
    # the file's last ViT-H block is dropped (SD 2.x conditions on the penultimate one): same layer count
    assert single.text_encoder.text_encoder.config.num_hidden_layers == \
        folder.text_encoder.text_encoder.config.num_hidden_layers
    images = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    latents = folder.vae.encode(images)
    assert torch.equal(latents, single.vae.encode(images))
    assert torch.equal(folder.vae.decode(latents), single.vae.decode(latents))
    assert single.vae.scaling_factor == 0.18215


def test_tokenizers_from_comfyuis_files_give_comfyuis_token_ids(folders, tiny_single_files):
    """The loaders' tokenizers when the source is ComfyUI's comfy/sd1_tokenizer/ (real CLIP vocabulary): the
    token ids ComfyUI's own SDXL and SD 2.x tokenizers give, each beside its own encoder."""
    source = files.find_clip_tokenizer(files.clip_tokenizer_dirs())
    assert source is not None and source.endswith("sd1_tokenizer")
    configs = {kind: diffusers_folder_configs(folders[kind], tuple(parts))
               for kind, parts in (("sdxl", SDXL_CONFIGS), ("sd21", SD21_CONFIGS))}
    clip_l, clip_g = load_sdxl_single_file(tiny_single_files["sdxl"], tokenizer_source=source,
                                           configs=configs["sdxl"])[2].tokenizers
    vit_h = load_sd21_single_file(tiny_single_files["sd21"], tokenizer_source=source,
                                  configs=configs["sd21"]).text_encoder.tokenizer
    assert load_clip_tokenizers(source, "sd21")[0].get_vocab() == clip_l.get_vocab() and len(clip_l) == 49408
    for prompt, comfy in tiny_single_files["tokens"].items():
        for key, tokenizer in (("l", clip_l), ("g", clip_g), ("h", vit_h)):
            ours = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length,
                             truncation=True).input_ids[0]
            assert ours == comfy[key], (prompt, key)
    short = tiny_single_files["tokens"]["a person in a red shirt"]
    assert short["l"] != short["g"]  # CLIP-L pads with its end token, bigG with "!": the check tells them apart


def test_files_of_another_layout_are_refused_saying_what_they_are(folders, tiny_single_files, tiny_models_dir,
                                                                   tmp_path):
    sdxl, sd21 = tiny_single_files["sdxl"], tiny_single_files["sd21"]
    with pytest.raises(WrongModelFile, match="Stable Diffusion 2.x checkpoint"):
        load_single("sdxl", sd21, folders)
    with pytest.raises(WrongModelFile, match="SDXL base checkpoint"):
        load_single("sd21", sdxl, folders)
    unet_only = str(tiny_models_dir / "checkpoints" / TINY_SDXL_UNET_FILE)
    with pytest.raises(WrongModelFile, match="UNet alone"):
        load_single("sdxl", unet_only, folders)
    pickled = tmp_path / "sd_xl_base_1.0.ckpt"
    pickled.write_bytes(b"")
    with pytest.raises(WrongModelFile, match="only .safetensors"):
        load_single("sdxl", str(pickled), folders)
    with pytest.raises(WrongModelFile, match="wrong shape|does not have the SDXL layout"):  # SDXL 1.0's real sizes
        load_single("sdxl", sdxl, folders, configs={})


def test_an_openclip_tower_in_transformers_layout_is_refused(folders, tiny_single_files, tmp_path):
    """bigG stored under its prefix with transformers' key names (not open_clip's): refused, not half-loaded."""
    state = {k: v for k, v in load_file(tiny_single_files["sdxl"]).items()
             if not k.startswith("conditioner.embedders.1.model.")}
    bigg = load_file(f"{folders['sdxl']}/text_encoder_2/model.safetensors")
    state.update({"conditioner.embedders.1.model." + k: v for k, v in bigg.items()})
    path = str(tmp_path / "transformers_layout_bigg.safetensors")
    save_file(state, path)
    with pytest.raises(WrongModelFile, match="OpenCLIP.*missing"):
        load_single("sdxl", path, folders)


def test_without_tokenizer_files_the_error_says_where_to_put_them(tiny_single_files, tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFBODY_COMFYUI_DIR", raising=False)
    monkeypatch.setattr(files, "PACK_ROOT", tmp_path / "elsewhere" / "ComfyUI-DiffBody")
    with pytest.raises(MissingModelFile) as error:
        load_sdxl_single_file(tiny_single_files["sdxl"])
    message = str(error.value)
    for words in ("tiny_sd_xl_base.safetensors", "vocab.json", "comfy/sd1_tokenizer", "DIFFBODY_COMFYUI_DIR",
                  "--clip-tokenizer"):
        assert words in message, words


def test_default_text_encoder_sizes_are_comfyuis(tiny_single_files):
    """The released text towers' sizes, beside ComfyUI's own configs of the same models (read as data); ComfyUI
    holds SD 2.x's whole ViT-H (24 blocks), diffusers' config the 23 SD 2.x uses."""
    from comfy_harness import comfyui_dir
    from comfyui_diffbody.models import single_file

    comfy = comfyui_dir() / "comfy"
    sizes = ("hidden_size", "intermediate_size", "num_attention_heads", "hidden_act", "vocab_size",
             "max_position_embeddings", "layer_norm_eps")
    for ours, theirs, extra_layers in ((single_file.SDXL_TEXT_ENCODER_CONFIG, comfy / "sd1_clip_config.json", 0),
                                       (single_file.SDXL_TEXT_ENCODER_2_CONFIG, comfy / "clip_config_bigg.json", 0),
                                       (single_file.SD21_TEXT_ENCODER_CONFIG,
                                        comfy / "text_encoders" / "sd2_clip_config.json", 1)):
        config = json.loads(theirs.read_text())
        assert {k: ours[k] for k in sizes} == {k: config[k] for k in sizes}, theirs.name
        assert ours["num_hidden_layers"] + extra_layers == config["num_hidden_layers"], theirs.name


def test_the_released_layouts_load_with_the_default_configs(tmp_path, monkeypatch):
    """The released files' layout as ComfyUI saves them (the real-size fixture factory's specs: key names and
    shapes, meta tensors): the loaders' defaults take every tensor of it and build networks of the released sizes."""
    from comfy_harness import comfyui_dir
    from single_files import released_layouts

    from comfyui_diffbody.models import single_file

    layouts = released_layouts(tmp_path)
    served = {}
    monkeypatch.setattr(single_file, "read_safetensors_header", lambda path, expected=None: ({}, list(served)))
    monkeypatch.setattr(single_file, "read_safetensors", lambda path, prefix="", expected=None: {
        k[len(prefix):]: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
        for k, (shape, dtype) in served.items() if k.startswith(prefix)})
    tokenizers = str(comfyui_dir() / "comfy" / "sd1_tokenizer")
    path = tmp_path / "sd_xl_base_1.0.safetensors"
    path.write_bytes(b"")
    served.update(layouts["sdxl"])
    unet, vae, text = load_sdxl_single_file(str(path), tokenizer_source=tokenizers, device="meta")
    counts = [sum(p.numel() for p in net.parameters()) for net in (unet, vae, *text.encoders)]
    assert counts == [2_567_463_684, 83_653_863, 123_060_480, 694_659_840]
    served.clear()
    served.update(layouts["sd21"])
    components = load_sd21_single_file(str(path), tokenizer_source=tokenizers, device="meta")
    assert components.text_encoder.text_encoder.config.num_hidden_layers == 23
    assert sum(p.numel() for p in components.text_encoder.text_encoder.parameters()) == 340_387_840
