"""Stage 2's networks, weight files and diffusers sampling path, on tiny random models.

Independent references used as oracles: diffusers' own ControlNetModel, IP-Adapter loader and
single-file converter; ComfyUI's own UNetModel, key map and Timestep embedder (in a subprocess, so
ComfyUI's modules never enter this test process).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from comfyui_diffbody.models.colour_adapter import ColourAdapter, ColourAdapterConfig, infer_config, load_colour_adapter
from comfyui_diffbody.models.errors import MissingModelFile, WrongModelFile
from comfyui_diffbody.models.multiprior_controlnet import PRIORS, MultiPriorControlNet, MultiPriorControlNetConfig
from comfyui_diffbody.models.sdxl_components import load_clip_vision, load_sdxl_parts
from comfyui_diffbody.models.stage2_weights import (load_multiprior, multiprior_from_diffusers_controlnet,
                                                    multiprior_from_sdxl_unet, save_colour_adapter, save_multiprior)
from comfyui_diffbody.models.unet_layout import (SDXL_UNET_CONFIG, attention_processor_names, comfy_attn2_locations,
                                                 cross_attention_layers, diffusers_unet_to_ldm, ldm_unet_to_diffusers)
from comfyui_diffbody.pipelines.colour_attention import colour_adapter_installed
from comfyui_diffbody.pipelines.sampling import scheduler_for_steps
from comfyui_diffbody.pipelines.stage2 import (SCHEDULERS, SDXL_TRAINING_SCHEDULE, Stage2Pipeline, Stage2Settings,
                                                 active_at)
from comfyui_diffbody.pipelines.stage2_errors import Stage2Error
from comfyui_diffbody.testing.tiny import stage2 as tiny

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def parts():
    return tiny.build_tiny_stage2_components(seed=0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2")
    written = tiny.write_tiny_sdxl(str(root / "tiny-sdxl"), str(root / "tiny_sdxl_unet.safetensors"), seed=0)
    written["adapter"] = tiny.write_tiny_ip_adapter_plus_xl(str(root / "ipadapter" / "tiny-plus.safetensors"))
    written["controlnet"] = tiny.write_tiny_multiprior(str(root / "diffbody" / "tiny_cn.safetensors"))
    return written


def unet_inputs(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, SIZE // 8, SIZE // 8, generator=g)
    context = torch.randn(batch, 77, tiny.CONTEXT_DIM, generator=g)
    pooled = torch.randn(batch, tiny.POOLED_DIM, generator=g)
    time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * batch, dtype=torch.float32)
    return x, torch.tensor([500.0] * batch), context, pooled, time_ids


def prior_images(batch=1, seed=2):
    g = torch.Generator().manual_seed(seed)
    return {p: torch.rand(batch, 3, SIZE, SIZE, generator=g) for p in PRIORS}


# -- layer order ------------------------------------------------------------------------------------------

def test_processor_order_is_diffusers_order_tiny_and_real():
    from diffusers import UNet2DConditionModel

    tiny_unet = UNet2DConditionModel(**tiny.tiny_sdxl_unet_config())
    assert attention_processor_names(tiny.tiny_sdxl_unet_config()) == list(tiny_unet.attn_processors)
    with torch.device("meta"):
        real = UNet2DConditionModel(**SDXL_UNET_CONFIG)
    names = list(real.attn_processors)
    assert attention_processor_names() == names
    assert len(names) == 140 and names[-1].startswith("mid_block.")
    layers = cross_attention_layers()
    assert [l.processor_index for l in layers] == list(range(1, 140, 2))
    assert all(names[l.processor_index] == l.processor_name for l in layers)


def test_comfy_locations_of_sdxl_from_both_config_kinds():
    comfy_sdxl = {"model_channels": 320, "channel_mult": [1, 2, 4], "num_res_blocks": [2, 2, 2],
                  "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
                  "transformer_depth_middle": 10, "context_dim": 2048, "num_head_channels": 64, "num_heads": -1}
    assert cross_attention_layers(comfy_sdxl) == cross_attention_layers(SDXL_UNET_CONFIG)
    locations = comfy_attn2_locations()
    assert len(locations) == 70
    assert locations[:4] == [("input", 4, 0), ("input", 4, 1), ("input", 5, 0), ("input", 5, 1)]
    assert locations[4:24] == [("input", 7, t) for t in range(10)] + [("input", 8, t) for t in range(10)]
    assert locations[24:54] == [("output", n, t) for n in range(3) for t in range(10)]
    assert locations[54:60] == [("output", n, t) for n in range(3, 6) for t in range(2)]
    assert locations[60:] == [("middle", 0, t) for t in range(10)]
    layers = cross_attention_layers()
    assert {(l.comfy_location[0], l.hidden_size, l.heads) for l in layers} == {
        ("input", 640, 10), ("input", 1280, 20), ("output", 1280, 20), ("output", 640, 10), ("middle", 1280, 20)}


# -- colour adapter file --------------------------------------------------------------------------------

def public_key_pattern(config: ColourAdapterConfig) -> dict[str, tuple[int, ...]]:
    """IP-Adapter Plus's keys and shapes, written out from the published layout (method.md)."""
    d, inner, out = config.dim, config.heads * config.dim_head, config.output_dim
    keys = {"image_proj.latents": (1, config.num_queries, d),
            "image_proj.proj_in.weight": (d, config.embedding_dim), "image_proj.proj_in.bias": (d,),
            "image_proj.proj_out.weight": (out, d), "image_proj.proj_out.bias": (out,),
            "image_proj.norm_out.weight": (out,), "image_proj.norm_out.bias": (out,)}
    for n in range(config.depth):
        p = f"image_proj.layers.{n}."
        keys.update({p + "0.norm1.weight": (d,), p + "0.norm1.bias": (d,), p + "0.norm2.weight": (d,),
                     p + "0.norm2.bias": (d,), p + "0.to_q.weight": (inner, d), p + "0.to_kv.weight": (2 * inner, d),
                     p + "0.to_out.weight": (d, inner), p + "1.0.weight": (d,), p + "1.0.bias": (d,),
                     p + "1.1.weight": (d * config.ff_mult, d), p + "1.3.weight": (d, d * config.ff_mult)})
    for k, size in zip(config.layer_indices, config.layer_hidden_sizes):
        keys[f"ip_adapter.{k}.to_k_ip.weight"] = (size, out)
        keys[f"ip_adapter.{k}.to_v_ip.weight"] = (size, out)
    return keys


def test_real_size_adapter_has_ip_adapter_plus_xl_layout():
    config = ColourAdapterConfig.plus_xl()
    with torch.device("meta"):
        adapter = ColourAdapter(config)
    shapes = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    assert shapes == public_key_pattern(config)
    assert shapes["image_proj.latents"] == (1, 16, 1280)
    assert shapes["image_proj.layers.0.0.to_kv.weight"] == (2560, 1280)
    assert shapes["ip_adapter.1.to_k_ip.weight"] == (640, 2048)
    assert shapes["ip_adapter.139.to_v_ip.weight"] == (1280, 2048)
    assert len(shapes) == 51 + 140
    assert infer_config(adapter.state_dict()) == config


def test_tiny_ip_adapter_file_loads_strictly_with_public_key_names(files):
    from safetensors import safe_open

    with safe_open(files["adapter"], framework="pt") as f:
        on_disk = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        assert not (f.metadata() or {}).get("diffbody_format")
    adapter = load_colour_adapter(files["adapter"], tiny.tiny_sdxl_unet_config())
    assert on_disk == public_key_pattern(adapter.config)
    assert sorted(int(k.split(".")[1]) for k in on_disk if k.endswith("to_k_ip.weight")) == list(range(1, 22, 2))
    assert adapter.layer_names() == attention_processor_names(tiny.tiny_sdxl_unet_config())[1::2]


def test_adapter_bin_layout_and_fine_tuned_save_round_trip(files, tmp_path):
    unet_config = tiny.tiny_sdxl_unet_config()
    adapter = load_colour_adapter(files["adapter"], unet_config)
    nested = {part: {k[len(part) + 1:]: v for k, v in adapter.state_dict().items() if k.startswith(part + ".")}
              for part in ("image_proj", "ip_adapter")}
    torch.save(nested, tmp_path / "ip-adapter-plus_sdxl_vit-h.bin")
    from_bin = load_colour_adapter(str(tmp_path / "ip-adapter-plus_sdxl_vit-h.bin"), unet_config)
    saved = save_colour_adapter(from_bin, str(tmp_path / "diffbody_colour_adapter.safetensors"))
    again = load_colour_adapter(saved, unet_config)
    for key, value in adapter.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


@pytest.mark.parametrize("damage, message", [
    ("basic", "basic IP-Adapter"),
    ("not_ip", "not an IP-Adapter"),
    ("even_indices", "ip_adapter layers"),
    ("drop_key", "lacks"),
    ("shape", "has shape"),
    ("unexpected", "exact keys"),
])
def test_wrong_adapter_layouts_are_refused_clearly(files, tmp_path, damage, message):
    from safetensors.torch import load_file, save_file

    state = load_file(files["adapter"])
    if damage == "basic":  # IP-Adapter (not Plus): image_proj.proj + image_proj.norm
        state = {k: v for k, v in state.items() if k.startswith("ip_adapter.")}
        state.update({"image_proj.proj.weight": torch.zeros(256, 32), "image_proj.norm.weight": torch.zeros(64)})
    elif damage == "not_ip":
        state = {"conv_in.weight": torch.zeros(4, 4, 3, 3)}
    elif damage == "even_indices":  # a loader counting only attn2 layers would write 0, 1, 2, ...
        def halved(k):
            return f"ip_adapter.{int(k.split('.')[1]) // 2}." + k.split(".", 2)[2] if k.startswith("ip_adapter.") else k
        state = {halved(k): v for k, v in state.items()}
    elif damage == "drop_key":
        del state["image_proj.layers.0.0.to_q.weight"]
    elif damage == "shape":
        state["ip_adapter.3.to_v_ip.weight"] = torch.zeros(7, tiny.CONTEXT_DIM)
    elif damage == "unexpected":
        state["image_proj.pos_emb.weight"] = torch.zeros(3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(WrongModelFile, match=message):
        load_colour_adapter(str(path), tiny.tiny_sdxl_unet_config())


def test_sdxl_adapter_refused_for_another_unet(files):
    # The tiny file on the real SDXL layout: 11 layers where SDXL has 70.
    with pytest.raises(WrongModelFile, match="70 cross-attentions"):
        load_colour_adapter(files["adapter"])
    with pytest.raises(MissingModelFile):
        load_colour_adapter(files["adapter"] + ".missing")


def test_adapter_matches_diffusers_ip_adapter_implementation(parts):
    """diffusers' own loader (its resampler, its processors, its layer order) gives the same UNet output."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**tiny.tiny_sdxl_unet_config())
    unet.load_state_dict(parts["unet"].state_dict())
    adapter = parts["adapter"]
    x, t, context, pooled, time_ids = unet_inputs()
    added = {"text_embeds": pooled, "time_ids": time_ids}
    features = torch.randn(2, 5, tiny.CLIP_VISION_WIDTH, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = unet(x, t, context, added_cond_kwargs=added).sample
        with colour_adapter_installed(unet, adapter) as state:
            state.tokens, state.weight = adapter.project(features), 0.7
            ours = unet(x, t, context, added_cond_kwargs=added).sample
        sd = adapter.state_dict()
        unet._load_ip_adapter_weights([{part: {k[len(part) + 1:]: v for k, v in sd.items() if k.startswith(part + ".")}
                                        for part in ("image_proj", "ip_adapter")}])
        for processor in unet.attn_processors.values():
            if hasattr(processor, "scale"):
                processor.scale = [0.7]
        theirs = unet(x, t, context, added_cond_kwargs={**added, "image_embeds": [features[:, None]]}).sample
    assert (ours - plain).abs().max() > 1e-2
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


# -- multi-prior ControlNet ------------------------------------------------------------------------------

def test_from_unet_copies_encoder_and_mirrors_diffusers_names(parts):
    from diffusers import ControlNetModel

    unet = parts["unet"]
    model = MultiPriorControlNet.from_unet(unet, MultiPriorControlNetConfig.tiny())
    ours, theirs = model.state_dict(), unet.state_dict()
    copied = [k for k in ours if k.split(".")[0] in ("conv_in", "time_embedding", "add_embedding", "down_blocks",
                                                     "mid_block")]
    assert copied and all(torch.equal(ours[k], theirs[k]) for k in copied)
    zero = [k for k in ours if k.startswith(("controlnet_down_blocks", "controlnet_mid_block",
                                             "controlnet_cond_embedding.conv_out"))]
    assert len(zero) == 2 * (9 + 1 + 1) and all(not ours[k].any() for k in zero)
    diffusers_keys = set(ControlNetModel.from_unet(unet).state_dict())
    own_outside_embedding = {k for k in ours if not k.startswith("controlnet_cond_embedding.")}
    assert own_outside_embedding == {k for k in diffusers_keys if not k.startswith("controlnet_cond_embedding.")}
    assert {k.split(".")[2] for k in ours if k.startswith("controlnet_cond_embedding.extractors.")} == set(PRIORS)


def test_real_size_controlnet_has_diffusers_sdxl_controlnet_keys():
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):
        ours = MultiPriorControlNet(MultiPriorControlNetConfig.sdxl()).state_dict()
        theirs = ControlNetModel.from_unet(UNet2DConditionModel(**SDXL_UNET_CONFIG),
                                           load_weights_from_unet=False).state_dict()
    outside = {k: tuple(v.shape) for k, v in ours.items() if not k.startswith("controlnet_cond_embedding.")}
    assert outside == {k: tuple(v.shape) for k, v in theirs.items() if not k.startswith("controlnet_cond_embedding.")}
    assert ours["controlnet_cond_embedding.conv_out.weight"].shape == (320, 256, 3, 3)
    assert ours["controlnet_cond_embedding.extractors.normal.conv_in.weight"].shape == (16, 3, 3, 3)


def test_controlnet_equals_diffusers_controlnet_with_one_prior(parts):
    """A diffusers SDXL ControlNet maps 1:1 onto the image extractor + fusion conv and gives the same
    residuals; this also checks our added vector y against diffusers' add_time_proj path."""
    from diffusers import ControlNetModel

    config = MultiPriorControlNetConfig.tiny()
    reference = ControlNetModel.from_unet(parts["unet"], conditioning_embedding_out_channels=(8, 16, 16, 32)).eval()
    tiny._randomise_zeros(reference, seed=4)
    ours = multiprior_from_diffusers_controlnet(reference.state_dict(), config, prior="image").eval()
    x, t, context, pooled, time_ids = unet_inputs()
    image = prior_images(batch=2)["image"]
    with torch.no_grad():
        down_ref, mid_ref = reference(x, t, context, image, conditioning_scale=0.8,
                                      added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
                                      return_dict=False)
        y = MultiPriorControlNet.sdxl_added_vector(pooled, time_ids)
        down, mid = ours(x, t, context, y, ours.embed_priors({"image": image}, {"image": 1.0}), 0.8)
    assert len(down) == len(down_ref) == 9
    for a, b in zip(down, down_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mid, mid_ref, atol=1e-5, rtol=1e-5)


def test_sdxl_added_vector_matches_the_unet_own_embedding(parts):
    unet = parts["unet"]
    _, _, _, pooled, time_ids = unet_inputs()
    time_ids = torch.tensor([[1024, 768, 16, 0, 1024, 768], [512, 512, 0, 0, 512, 512]], dtype=torch.float32)
    expected = torch.cat([pooled, unet.add_time_proj(time_ids.flatten()).reshape(2, -1)], dim=-1)
    assert torch.equal(MultiPriorControlNet.sdxl_added_vector(pooled, time_ids), expected)


def test_prior_embedding_is_the_weighted_sum(parts):
    model = parts["controlnet"]
    priors = prior_images()
    with torch.no_grad():
        zero = model.embed_priors(priors, {p: 0.0 for p in PRIORS})
        assert zero.shape == (1, 32, SIZE // 8, SIZE // 8) and not zero.any()
        bias = model.controlnet_cond_embedding.conv_out.bias.view(1, -1, 1, 1)
        single = {p: model.embed_priors(priors, {p: 1.0}) - bias for p in PRIORS}
        mixed = model.embed_priors(priors, {"image": 0.5, "pose": 2.0, "depth": -1.0, "normal": 0.25}) - bias
    expected = 0.5 * single["image"] + 2.0 * single["pose"] - single["depth"] + 0.25 * single["normal"]
    torch.testing.assert_close(mixed, expected, atol=1e-5, rtol=1e-4)
    assert not MultiPriorControlNet.is_active({p: 0.0 for p in PRIORS})
    assert not MultiPriorControlNet.is_active({"image": 1.0}, conditioning_scale=0.0)


def test_prior_inputs_are_checked(parts):
    model = parts["controlnet"]
    priors = prior_images()
    with pytest.raises(ValueError, match="unknown prior"):
        model.embed_priors(priors, {"segmentation": 1.0})
    with pytest.raises(ValueError, match="not given"):
        model.embed_priors({"image": priors["image"]}, {"image": 1.0, "pose": 1.0})
    with pytest.raises(ValueError, match="multiple of 8"):
        model.embed_priors({"image": priors["image"][..., :60]}, {"image": 1.0})
    with pytest.raises(ValueError, match="same shape"):
        model.embed_priors({"image": priors["image"], "pose": priors["pose"][..., :56]}, {"image": 1.0})


def test_zero_scale_gives_exact_zero_residuals_of_the_right_shapes(parts):
    model = parts["controlnet"]
    x, t, context, pooled, time_ids = unet_inputs()
    y = MultiPriorControlNet.sdxl_added_vector(pooled, time_ids)
    embedding = model.embed_priors(prior_images(batch=2), {"image": 1.0})
    with torch.no_grad():
        down, mid = model(x, t, context, y, embedding, 1.0)
        zero_down, zero_mid = model(x, t, context, y, embedding, 0.0)
        odd = torch.randn(2, 4, 5, 7)  # odd latent sizes: the downsamplers round up
        odd_down, odd_mid = model(odd, t, context, y, torch.zeros(2, 32, 5, 7), 1.0)
        odd_zero_down, odd_zero_mid = model(odd, t, context, y, torch.zeros(2, 32, 5, 7), 0.0)
    assert [d.shape for d in zero_down] == [d.shape for d in down] and zero_mid.shape == mid.shape
    assert [d.shape for d in odd_zero_down] == [d.shape for d in odd_down] and odd_zero_mid.shape == odd_mid.shape
    assert all(not d.any() for d in zero_down) and not zero_mid.any()
    assert any(d.abs().max() > 0 for d in down)


def test_gradient_checkpointing_gives_the_same_output_and_gradients(parts, monkeypatch):
    import torch.utils.checkpoint

    calls = []
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    model = MultiPriorControlNet.from_unet(parts["unet"], MultiPriorControlNetConfig.tiny())
    tiny._randomise_zeros(model, seed=9)
    x, t, context, pooled, time_ids = unet_inputs()
    y = MultiPriorControlNet.sdxl_added_vector(pooled, time_ids)
    priors = prior_images(batch=2)

    def loss_and_grad():
        model.zero_grad()
        down, mid = model(x, t, context, y, model.embed_priors(priors, {"image": 1.0, "normal": 0.5}))
        loss = sum(d.square().mean() for d in down) + mid.square().mean()
        loss.backward()
        return loss.detach(), model.down_blocks[1].attentions[0].proj_in.weight.grad.clone()

    plain = loss_and_grad()
    assert not calls
    model.enable_gradient_checkpointing()
    checkpointed = loss_and_grad()
    assert len(calls) >= 6  # every resnet and transformer of the encoder
    torch.testing.assert_close(checkpointed[0], plain[0])
    torch.testing.assert_close(checkpointed[1], plain[1])
    assert plain[1].abs().max() > 0


def test_strengths_zero_leave_the_unet_exactly_unconditioned(parts):
    """The diffusers path with every strength 0 equals the plain UNet bit for bit (the ControlNet is
    skipped); with a strength set, the same call differs."""
    pipe = Stage2Pipeline(**parts)
    off = Stage2Pipeline(parts["unet"], parts["vae"], parts["text_encoders"], None, parts["adapter"],
                         parts["image_encoder"])
    priors, restored = prior_images(), prior_images(seed=5)["image"]
    settings = dict(prompt="a person", steps=3, scheduler="ddim", seed=7)
    zero = pipe.sample_latents(priors, restored, Stage2Settings(**settings, strengths={p: 0.0 for p in PRIORS}))
    plain = off.sample_latents(priors, restored, Stage2Settings(**settings, strengths={}))
    assert torch.equal(zero, plain)
    on = pipe.sample_latents(priors, restored, Stage2Settings(**settings, strengths={"depth": 1.0}))
    assert (on - plain).abs().max() > 1e-3


def test_adapter_weight_zero_leaves_the_unet_exactly_unconditioned(parts):
    pipe = Stage2Pipeline(**parts)
    no_adapter = Stage2Pipeline(parts["unet"], parts["vae"], parts["text_encoders"], parts["controlnet"])
    priors, restored = prior_images(), prior_images(seed=5)["image"]
    settings = dict(prompt="a person", steps=3, scheduler="ddim", seed=7)
    plain = no_adapter.sample_latents(priors, restored, Stage2Settings(**settings, adapter_weight=0.0))
    assert torch.equal(pipe.sample_latents(priors, restored, Stage2Settings(**settings, adapter_weight=0.0)), plain)
    # start percent 1.0: never active, so the installed processors must call the UNet's own
    never = Stage2Settings(**settings, adapter_weight=1.0, adapter_start=1.0)
    assert torch.equal(pipe.sample_latents(priors, restored, never), plain)
    on = pipe.sample_latents(priors, restored, Stage2Settings(**settings, adapter_weight=1.0))
    assert (on - plain).abs().max() > 1e-3
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in parts["unet"].attn_processors.values())


# -- weight files ---------------------------------------------------------------------------------------

def test_controlnet_save_load_round_trip(parts, tmp_path):
    from safetensors import safe_open

    path = save_multiprior(parts["controlnet"], str(tmp_path / "diffbody_stage2_controlnet.safetensors"))
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    assert meta["diffbody_format"] == "stage2_controlnet" and meta["format_version"] == "1"
    assert json.loads(meta["config"]) == MultiPriorControlNetConfig.tiny().to_dict()
    loaded = load_multiprior(path)
    assert loaded.config == parts["controlnet"].config
    for key, value in parts["controlnet"].state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("case, error, message", [
    ("ip_adapter", WrongModelFile, "IP-Adapter"),
    ("diffusers_controlnet", WrongModelFile, "plain diffusers ControlNet"),
    ("newer_version", WrongModelFile, "version '2'"),
    ("missing_key", WrongModelFile, "expected keys"),
    ("garbage", WrongModelFile, "not a readable safetensors"),
    ("absent", MissingModelFile, "does not exist"),
])
def test_wrong_controlnet_files_are_refused_clearly(files, tmp_path, case, error, message):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = str(tmp_path / "file.safetensors")
    if case == "ip_adapter":
        path = files["adapter"]
    elif case == "diffusers_controlnet":
        save_file({"controlnet_cond_embedding.conv_in.weight": torch.zeros(8, 3, 3, 3)}, path)
    elif case in ("newer_version", "missing_key"):
        with safe_open(files["controlnet"], framework="pt") as f:
            meta = f.metadata()
        state = load_file(files["controlnet"])
        if case == "newer_version":
            meta["format_version"] = "2"
        else:
            del state["controlnet_mid_block.weight"]
        save_file(state, path, metadata=meta)
    elif case == "garbage":
        with open(path, "wb") as f:
            f.write(b"\x00" * 64)
    else:
        path = str(tmp_path / "absent.safetensors")
    with pytest.raises(error, match=message):
        load_multiprior(path)


def test_multiprior_from_sdxl_folder_and_single_file_agree(files, parts):
    unet_state = parts["unet"].state_dict()
    from_folder = multiprior_from_sdxl_unet(files["folder"])
    from_file = multiprior_from_sdxl_unet(files["single_file"], unet_config=tiny.tiny_sdxl_unet_config())
    assert from_folder.config.encoder_matches(MultiPriorControlNetConfig.tiny())
    for key in from_folder.state_dict():
        if key.split(".")[0] in ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block"):
            assert torch.equal(from_folder.state_dict()[key], unet_state[key]), key
            assert torch.equal(from_file.state_dict()[key], unet_state[key]), key
    with pytest.raises(WrongModelFile, match="SDXL"):
        multiprior_from_sdxl_unet(files["single_file"])  # the tiny file is not SDXL 1.0's size


def test_ldm_conversion_round_trips_through_diffusers_converter(parts):
    unet_config = tiny.tiny_sdxl_unet_config()
    original = parts["unet"].state_dict()
    back = ldm_unet_to_diffusers(diffusers_unet_to_ldm(original, unet_config), unet_config)
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_ldm_keys_of_real_sdxl():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        keys = set(diffusers_unet_to_ldm(UNet2DConditionModel(**SDXL_UNET_CONFIG).state_dict(), SDXL_UNET_CONFIG))
    assert len(keys) == 1680
    assert {"label_emb.0.0.weight", "input_blocks.3.0.op.weight", "input_blocks.6.0.op.weight",
            "input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight",
            "middle_block.1.transformer_blocks.9.ff.net.2.weight",
            "middle_block.2.out_layers.3.weight", "output_blocks.2.2.conv.weight", "output_blocks.5.2.conv.weight",
            "output_blocks.8.0.skip_connection.weight", "out.2.weight"} <= keys


# -- pipeline -------------------------------------------------------------------------------------------

def test_pipeline_runs_end_to_end_and_is_deterministic(parts):
    pipe = Stage2Pipeline(**parts)
    priors, restored = prior_images(), prior_images(seed=5)["image"]
    settings = Stage2Settings(prompt="a person in a red shirt", steps=3, scheduler="ddpm", seed=11,
                              strengths={"image": 1.0, "pose": 0.5, "depth": 0.5, "normal": 0.5}, adapter_weight=0.8)
    first = pipe(priors, restored, settings)
    assert first.shape == (1, 3, SIZE, SIZE) and first.dtype == torch.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    assert torch.equal(pipe(priors, restored, settings), first)
    settings.seed = 12
    assert not torch.equal(pipe(priors, restored, settings), first)


def test_batch_items_follow_their_own_seeds(parts):
    pipe = Stage2Pipeline(**parts)
    priors, restored = prior_images(batch=2), prior_images(batch=2, seed=5)["image"]
    settings = dict(prompt="a person", steps=2, scheduler="ddpm", strengths={"image": 1.0})
    both = pipe.sample_latents(priors, restored, Stage2Settings(**settings, seed=3))
    second = pipe.sample_latents({p: v[1:] for p, v in priors.items()}, restored[1:],
                                 Stage2Settings(**settings, seed=4))
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_samples(parts, scheduler):
    pipe = Stage2Pipeline(**parts)
    latents = pipe.sample_latents(prior_images(), prior_images(seed=5)["image"],
                                  Stage2Settings(prompt="x", steps=2, scheduler=scheduler, cfg=3.0))
    assert latents.shape == (1, 4, SIZE // 8, SIZE // 8) and torch.isfinite(latents).all()


class TimestepRecorder(torch.nn.Module):
    """A stand-in SDXL UNet of the smallest size the pipeline takes (8x8 px images, one latent pixel): it
    predicts zero noise and records every timestep it is asked for."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the pipeline reads device and dtype from it
        self.config = type("Config", (), {"in_channels": 4, "block_out_channels": (4,), "cross_attention_dim": 8})
        self.timesteps: list[float] = []

    def forward(self, sample, t, **conditions):
        self.timesteps.append(float(t))
        return type("Output", (), {"sample": torch.zeros_like(sample)})


@pytest.mark.parametrize("steps", [999, 1000])
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_step_counts_near_1000_stay_inside_the_training_schedule(scheduler, steps):
    """At 1000 steps SD's "leading" spacing asks for timestep 1000 (DPM-Solver's repeats one timestep); the
    guard stage 1 had, now shared, switches to "trailing" spacing."""
    unet = TimestepRecorder()
    settings = Stage2Settings(scheduler=scheduler, steps=steps, cfg=1.0, strengths={}, adapter_weight=0.0)
    latents = Stage2Pipeline(unet, None, None).sample_latents(
        {"image": torch.rand(1, 3, 8, 8)}, None, settings, prompt_embeds=(torch.zeros(1, 77, 8), torch.zeros(1, 4)))
    assert len(unet.timesteps) == steps
    if scheduler != "dpmpp_2m_karras":  # Karras sigmas, distinct, round to repeated timesteps near 0 (sampling.py)
        assert len(set(unet.timesteps)) == steps
    assert 0 <= min(unet.timesteps) and max(unet.timesteps) <= 999
    assert torch.isfinite(latents).all()


def test_pipeline_from_the_written_folders_equals_the_in_memory_one(files, parts, tmp_path):
    unet, vae, text_encoders = load_sdxl_parts(files["folder"])
    written = tiny.write_tiny_clip_vision(str(tmp_path / "clip_vision"), str(tmp_path / "clip_vision.safetensors"))
    from_folder = load_clip_vision(written["folder"])
    from_file = load_clip_vision(written["single_file"], config=tiny.tiny_clip_vision_kwargs())
    pixels = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(from_folder(pixels).image_embeds, from_file(pixels).image_embeds)
    with pytest.raises(WrongModelFile, match="ViT-H-14"):
        load_clip_vision(written["single_file"])
    loaded = Stage2Pipeline(unet, vae, text_encoders, parts["controlnet"], parts["adapter"], from_file)
    settings = Stage2Settings(prompt="a person", steps=2, scheduler="euler", strengths={"pose": 1.0})
    priors, restored = prior_images(), prior_images(seed=5)["image"]
    assert torch.equal(loaded(priors, restored, settings), Stage2Pipeline(**parts)(priors, restored, settings))


def test_pipeline_refuses_what_it_cannot_do(parts):
    pipe = Stage2Pipeline(parts["unet"], parts["vae"], parts["text_encoders"])
    with pytest.raises(Stage2Error, match="no stage-2 ControlNet"):
        pipe.sample_latents(prior_images(), None, Stage2Settings(strengths={"image": 1.0}, adapter_weight=0.0))
    with pytest.raises(Stage2Error, match="colour adapter"):
        pipe.sample_latents(prior_images(), None, Stage2Settings(strengths={}, adapter_weight=1.0))
    with pytest.raises(Stage2Error, match="multiples of 32"):
        pipe.sample_latents({"image": torch.rand(1, 3, 48, 64)}, None, Stage2Settings(strengths={}, adapter_weight=0.0))


def test_percent_ranges_follow_comfyui():
    assert active_at(999, 0.0, 1.0) and active_at(0, 0.0, 1.0)
    assert active_at(999 * 0.5, 0.5, 1.0) and not active_at(999 * 0.5 + 1, 0.5, 1.0)
    assert active_at(999 * 0.25, 0.0, 0.75) and not active_at(999 * 0.25 - 1, 0.0, 0.75)
    assert not active_at(1, 1.0, 1.0)


# -- ComfyUI's own modules (subprocess) ---------------------------------------------------------------

COMFY_CHECK = r'''
import json, sys, torch
comfy_dir, folder, single_file, adapter_path, controlnet_path = sys.argv[1:6]
sys.path.insert(0, comfy_dir)
torch.set_num_threads(1)
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.model_management  # noqa: F401
import comfy.model_detection, comfy.utils
from comfy.ldm.modules.attention import optimized_attention
from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep, UNetModel
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file
from comfyui_diffbody.models.colour_adapter import load_colour_adapter
from comfyui_diffbody.models.multiprior_controlnet import MultiPriorControlNet
from comfyui_diffbody.models.stage2_weights import load_multiprior
from comfyui_diffbody.models.unet_layout import SDXL_UNET_CONFIG, comfy_attn2_locations, diffusers_unet_to_ldm
from comfyui_diffbody.pipelines.colour_attention import colour_adapter_installed
from comfyui_diffbody.testing.tiny import stage2 as tiny

out = {}
prefix = "model.diffusion_model."
ldm = load_file(single_file)
detected = comfy.model_detection.detect_unet_config(ldm, prefix)
config = tiny.tiny_comfy_unet_config()
out["detected_differs"] = sorted(k for k in detected if detected[k] != config[k])
comfy_unet = UNetModel(**config)
comfy_unet.load_state_dict({k[len(prefix):]: v for k, v in ldm.items()}, strict=True)
unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
key_map = comfy.utils.unet_to_diffusers(config)
state = unet.state_dict()
out["unmapped"] = [k for k in state if k not in key_map][:3]
out["map_mismatch"] = [k for k in state if not torch.equal(state[k], ldm[prefix + key_map[k]])][:3]
with torch.device("meta"):
    real = UNet2DConditionModel(**SDXL_UNET_CONFIG)
real_map = comfy.utils.unet_to_diffusers({"num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "transformer_depth_middle": 10})
ours = diffusers_unet_to_ldm({k: None for k in real.state_dict()}, SDXL_UNET_CONFIG)
pairs = list(zip(real.state_dict(), ours))
out["real_map_mismatch"] = [(d, l, real_map[d]) for d, l in pairs if d in real_map and real_map[d] != l][:3]
out["real_map_covered"] = sum(d in real_map for d, _ in pairs)

g = torch.Generator().manual_seed(1)
x = torch.randn(2, 4, 8, 8, generator=g)
t = torch.tensor([500.0, 500.0])
context = torch.randn(2, 77, tiny.CONTEXT_DIM, generator=g)
pooled = torch.randn(2, tiny.POOLED_DIM, generator=g)
time_ids = torch.tensor([[64, 64, 0, 0, 64, 64], [768, 512, 8, 0, 768, 512]], dtype=torch.float32)
y = MultiPriorControlNet.sdxl_added_vector(pooled, time_ids)
comfy_y = torch.cat([pooled, Timestep(256)(time_ids.flatten()).reshape(2, -1)], dim=1)
out["y"] = (y - comfy_y).abs().max().item()
added = {"text_embeds": pooled, "time_ids": time_ids}

def diff(a, b):
    return (a - b).abs().max().item()

with torch.no_grad():
    out["plain"] = diff(unet(x, t, context, added_cond_kwargs=added).sample,
                        comfy_unet(x, t, context, y, transformer_options={}))
    cn = load_multiprior(controlnet_path)
    priors = {p: torch.rand(2, 3, 64, 64, generator=g) for p in ("image", "pose", "depth", "normal")}
    down, mid = cn(x, t, context, y, cn.embed_priors(priors, {"image": 1.0, "pose": 0.5, "depth": 0.5}), 0.9)
    ref = unet(x, t, context, added_cond_kwargs=added, down_block_additional_residuals=down,
               mid_block_additional_residual=mid).sample
    control = {"output": [d.clone() for d in down], "middle": [mid.clone()]}
    out["control"] = diff(ref, comfy_unet(x, t, context, y, control=control, transformer_options={}))
    out["control_effect"] = diff(ref, unet(x, t, context, added_cond_kwargs=added).sample)

    adapter = load_colour_adapter(adapter_path, tiny.tiny_sdxl_unet_config())
    tokens = adapter.project(torch.randn(2, 5, tiny.CLIP_VISION_WIDTH, generator=g))
    with colour_adapter_installed(unet, adapter) as state:
        state.tokens, state.weight = tokens, 0.8
        ref = unet(x, t, context, added_cond_kwargs=added).sample

    def patch(index):
        def attn2(q, k, v, extra):
            heads = extra["n_heads"]
            return optimized_attention(q, k, v, heads) + 0.8 * adapter.ip_attention(index, q, tokens, heads)
        return attn2

    def run(locations):
        replace = {loc: patch(i) for i, loc in enumerate(locations)}
        return comfy_unet(x, t, context, y, transformer_options={"patches_replace": {"attn2": replace}})

    locations = comfy_attn2_locations(tiny.tiny_sdxl_unet_config())
    out["adapter"] = diff(ref, run(locations))
    swapped = [locations[1], locations[0]] + locations[2:]
    out["adapter_swapped"] = diff(ref, run(swapped))
    out["adapter_effect"] = diff(ref, unet(x, t, context, added_cond_kwargs=added).sample)
print("RESULT " + json.dumps(out))
'''


def test_against_comfyui_own_modules(files, tmp_path):
    """Same weights on both hosts: ComfyUI's UNetModel (loaded from our original-layout file) matches the
    diffusers UNet; ComfyUI's key map and detection agree with ours; our ControlNet residuals applied the
    ComfyUI way ({"output": down, "middle": [mid]}) and our adapter applied as attn2 replace patches at
    `comfy_attn2_locations` give the diffusers results; swapping two locations does not."""
    from comfy_harness import comfyui_dir

    script = tmp_path / "comfy_check.py"
    script.write_text(COMFY_CHECK)
    done = subprocess.run([sys.executable, str(script), str(comfyui_dir()), files["folder"], files["single_file"],
                           files["adapter"], files["controlnet"]], capture_output=True, text=True, timeout=300)
    lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-4000:]
    r = json.loads(lines[-1][len("RESULT "):])
    assert r["detected_differs"] == [] and r["unmapped"] == [] and r["map_mismatch"] == []
    assert r["real_map_mismatch"] == [] and r["real_map_covered"] == 1680
    assert r["y"] < 1e-6
    assert r["plain"] < 1e-4
    assert r["control"] < 1e-4 < r["control_effect"]
    assert r["adapter"] < 1e-4 < r["adapter_effect"]
    assert r["adapter_swapped"] > 1e-3


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_denoise_below_one_starts_from_the_image_and_runs_the_last_steps(parts, scheduler, monkeypatch):
    """The face pass's img2img: denoise 0.5 of 4 steps runs the last 2 timesteps of the 4-step schedule, from the
    start image's latent; a low denoise keeps the start latent."""
    pipe = Stage2Pipeline(**parts)
    priors, restored = prior_images(), prior_images(seed=5)["image"]
    start = prior_images(seed=9)["image"]
    seen, unet = [], pipe._unet
    monkeypatch.setattr(pipe, "_unet", lambda sample, t, *args: seen.append(float(t)) or unet(sample, t, *args))
    full = scheduler_for_steps(scheduler, 4, SDXL_TRAINING_SCHEDULE).timesteps.tolist()
    settings = Stage2Settings(prompt="x", steps=4, scheduler=scheduler, cfg=1.0, denoise=0.5, strengths={"image": 1.0})
    pipe(priors, restored, settings, start=start)
    assert seen == full[2:]

    # compared as latents, and from a start latent of unit spread: the tiny random VAE encodes every image to
    # nearly zero, so a sampler that ignored its start would pass with the encoded one
    kept = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(4))
    assert pipe.encode(start).shape == kept.shape
    monkeypatch.setattr(pipe, "encode", lambda images: kept)
    low = pipe.sample_latents(priors, restored, dataclasses.replace(settings, denoise=0.25), start=start)
    assert (low - kept).abs().mean() < 0.5 * (low + kept).abs().mean()  # near the start, far from its negative
    with pytest.raises(Stage2Error, match="needs a start image"):
        pipe(priors, restored, settings)
