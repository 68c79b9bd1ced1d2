"""DiffBody stage-1 networks (joint UNet, ControlNet) and their weights: structure, initialisation from
SD 2.1 / HumanSD files, our safetensors layout, and the refusals. CPU, tiny config unless stated."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from comfyui_diffbody.models.errors import MissingModelFile, WrongModelFile
from comfyui_diffbody.models.joint_unet import (BRANCHES, JointUNet, JointUNetConfig, Stage1ControlResiduals,
                                               sd_key_to_joint_keys)
from comfyui_diffbody.models.loading import read_state_dict
from comfyui_diffbody.models.stage1_controlnet import Stage1ControlNet
from comfyui_diffbody.models.stage1_weights import (
    joint_unet_from_humansd,
    joint_unet_from_sd21,
    load_stage1_controlnet,
    load_stage1_unet,
    save_stage1_unet,
)
from comfyui_diffbody.testing.tiny.stage1 import (
    build_tiny_sd_unet,
    build_tiny_stage1,
    ldm_unet_state_dict,
    write_tiny_humansd,
    write_tiny_sd21_checkpoint,
    write_tiny_sd21_diffusers,
    write_tiny_stage1,
)

TINY = JointUNetConfig.tiny()
T = torch.tensor([7, 640])


def inputs(seed: int = 0, batch: int = 2, h: int = 8, w: int = 8):
    g = torch.Generator().manual_seed(seed)
    noisy = torch.randn(batch, 3, 4, h, w, generator=g)
    pose = torch.randn(batch, 4, h, w, generator=g)
    context = torch.randn(batch, 5, TINY.cross_attention_dim, generator=g)
    image_latent = torch.randn(batch, 4, h, w, generator=g)
    return noisy, pose, context, image_latent


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    unet_path, controlnet_path = write_tiny_stage1(str(root / "diffbody_stage1_unet.safetensors"),
                                                   str(root / "diffbody_stage1_controlnet.safetensors"))
    return {
        "root": root,
        "sd_single": write_tiny_sd21_checkpoint(str(root / "v2-1_512-ema-pruned.safetensors"), seed=0),
        "sd_ckpt": write_tiny_sd21_checkpoint(str(root / "v2-1_512-ema-pruned.ckpt"), seed=0),
        "sd_folder": write_tiny_sd21_diffusers(str(root / "stable-diffusion-2-1-base"), seed=0),
        "humansd": write_tiny_humansd(str(root / "humansd-v1.ckpt"), seed=1),
        "unet": unet_path,
        "controlnet": controlnet_path,
    }


@pytest.fixture(scope="module")
def stage1():
    return build_tiny_stage1(seed=0)


# ---- structure -----------------------------------------------------------------------------------------

def _numel(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def test_real_size_matches_sd21_base_plus_two_extra_branches():
    from diffusers import UNet2DConditionModel

    config = JointUNetConfig.sd21_base()
    with torch.device("meta"):
        joint = JointUNet(config)
        sd = UNet2DConditionModel(**config.to_diffusers_unet_config(in_channels=8))
    branch_part = _numel(sd.conv_in, sd.down_blocks[0], sd.up_blocks[-1], sd.conv_norm_out, sd.conv_out)
    assert _numel(joint) == _numel(sd) + (len(BRANCHES) - 1) * branch_part
    # SD 2.1-base's published sizes, as a guard on the config itself
    assert _numel(sd) - 4 * 320 * 9 == 865_910_724  # the 4-input-channel SD 2.1 UNet


def test_every_sd_key_maps_one_to_one_onto_the_joint_unet():
    from diffusers import UNet2DConditionModel

    config = JointUNetConfig.sd21_base()
    with torch.device("meta"):
        joint = JointUNet(config).state_dict()
        sd = UNet2DConditionModel(**config.to_diffusers_unet_config(in_channels=8)).state_dict()
    mapped = {}
    for key, value in sd.items():
        for joint_key in sd_key_to_joint_keys(key, config):
            mapped[joint_key] = value.shape
    assert mapped == {k: v.shape for k, v in joint.items()}
    assert "branches.rgb.up_blocks.3.attentions.2.proj_out.weight" in joint
    assert "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight" in joint


def test_config_round_trip_and_diffusers_config():
    for config in (JointUNetConfig.sd21_base(), TINY):
        assert JointUNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
        assert JointUNetConfig.from_diffusers_unet_config(config.to_diffusers_unet_config()) == config
    with pytest.raises(ValueError, match="unknown JointUNetConfig fields: bogus"):
        JointUNetConfig.from_dict({**TINY.to_dict(), "bogus": 1})
    sdxl_like = {**TINY.to_diffusers_unet_config(), "addition_embed_type": "text_time"}
    with pytest.raises(ValueError, match="addition_embed_type"):
        JointUNetConfig.from_diffusers_unet_config(sdxl_like)


def _no_gradient(param) -> bool:
    return param.grad is None or torch.count_nonzero(param.grad) == 0


def test_branches_are_separate_experts_over_a_shared_trunk(stage1):
    unet, _ = stage1
    noisy, pose, context, _ = inputs()
    branch_params = {b: {id(p) for p in unet.branches[b].parameters()} for b in BRANCHES}
    assert not branch_params["depth"] & branch_params["normal"]
    assert not branch_params["normal"] & branch_params["rgb"]
    with torch.no_grad():
        base = unet(noisy, pose, T, context)
        assert base.shape == noisy.shape
        # A branch's output head touches only that branch's prediction.
        bias = unet.branches["depth"].conv_out.bias
        kept = bias.clone()
        bias.add_(1.0)
        changed = unet(noisy, pose, T, context)
        bias.copy_(kept)
    assert not torch.allclose(changed[:, 0], base[:, 0])
    assert torch.equal(changed[:, 1:], base[:, 1:])

    # A loss on the RGB prediction alone: the other branches' output heads get no gradient, their
    # encoders (merged into the shared trunk) and the trunk do.
    unet.zero_grad()
    unet(noisy, pose, T, context)[:, BRANCHES.index("rgb")].square().mean().backward()
    assert _no_gradient(unet.branches["depth"].conv_out.weight)
    assert _no_gradient(unet.branches["normal"].last_up_block.resnets[0].conv1.weight)
    assert unet.branches["depth"].conv_in.weight.grad.abs().sum() > 0
    assert unet.down_blocks["1"].resnets[0].conv1.weight.grad.abs().sum() > 0
    assert unet.branches["rgb"].conv_out.weight.grad.abs().sum() > 0
    unet.zero_grad()


def test_each_branch_reads_its_own_noisy_latent(stage1):
    unet, _ = stage1
    noisy, pose, context, _ = inputs()
    moved = noisy.clone()
    moved[:, BRANCHES.index("normal")] += 1.0
    with torch.no_grad():
        base, out = unet(noisy, pose, T, context), unet(moved, pose, T, context)
        # the normal branch's own skips change its prediction most; the others only via the merged trunk
        delta = (out - base).flatten(2).abs().mean(-1).mean(0)
    assert delta[BRANCHES.index("normal")] > 0 and delta.argmax() == BRANCHES.index("normal")


def test_input_shapes_are_checked(stage1):
    unet, _ = stage1
    noisy, pose, context, _ = inputs()
    with pytest.raises(ValueError, match=r"noisy must be \(B, 3, 4, h, w\)"):
        unet(noisy[:, 0], pose, T, context)
    with pytest.raises(ValueError, match="pose_latent must be"):
        unet(noisy, pose[:, :3], T, context)


def test_gradient_checkpointing_gives_the_same_gradients():
    unet, _ = build_tiny_stage1(seed=4)
    noisy, pose, context, _ = inputs(seed=2, batch=1)

    def grads():
        unet.zero_grad()
        unet(noisy, pose, 3, context[:1]).square().mean().backward()
        return {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}

    plain = grads()
    unet.enable_gradient_checkpointing()
    unet.train()
    assert unet.down_blocks["1"].gradient_checkpointing and unet.branches["rgb"].first_down_block.gradient_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)


# ---- initialisation from SD 2.1 and HumanSD ------------------------------------------------------------

@pytest.mark.parametrize("source", ["sd_single", "sd_ckpt", "sd_folder"])
def test_sd21_init_makes_every_branch_the_source_unet(files, source):
    unet = joint_unet_from_sd21(files[source], TINY if source != "sd_folder" else None)
    assert unet.config == TINY
    reference = build_tiny_sd_unet(seed=0)
    noisy, _, context, _ = inputs(seed=5)
    same = noisy[:, :1].expand(-1, 3, -1, -1, -1)  # the same latent in every branch
    with torch.no_grad():
        out = unet(same, torch.zeros(2, 4, 8, 8), T, context)
        expected = reference(noisy[:, 0], T, context).sample
    for i in range(len(BRANCHES)):
        torch.testing.assert_close(out[:, i], expected, rtol=0, atol=1e-5)
    # the pose channels start at zero, the latent channels are SD's
    conv_in = unet.branches["depth"].conv_in.weight
    assert torch.equal(conv_in[:, 4:], torch.zeros_like(conv_in[:, 4:]))
    assert torch.equal(conv_in[:, :4], reference.conv_in.weight)
    # the branches hold copies, not shared tensors
    assert unet.branches["rgb"].conv_out.weight.data_ptr() != unet.branches["depth"].conv_out.weight.data_ptr()


def test_sd21_init_handles_sizes_not_divisible_by_the_downsampling(files):
    unet = joint_unet_from_sd21(files["sd_single"], TINY)
    reference = build_tiny_sd_unet(seed=0)
    g = torch.Generator().manual_seed(9)
    latent, context = torch.randn(1, 4, 6, 10, generator=g), torch.randn(1, 3, 32, generator=g)
    with torch.no_grad():
        out = unet(latent[:, None].expand(-1, 3, -1, -1, -1), torch.zeros(1, 4, 6, 10), 500, context)
        expected = reference(latent, 500, context).sample
    torch.testing.assert_close(out[:, 2], expected, rtol=0, atol=1e-5)


def test_humansd_init_copies_the_8_channel_conv_in_into_every_branch(files):
    unet = joint_unet_from_humansd(files["humansd"], TINY)
    reference = build_tiny_sd_unet(in_channels=8, seed=1)
    noisy, pose, context, _ = inputs(seed=6)
    same = noisy[:, :1].expand(-1, 3, -1, -1, -1)
    with torch.no_grad():
        out = unet(same, pose, T, context)
        expected = reference(torch.cat([noisy[:, 0], pose], dim=1), T, context).sample
    for i in range(len(BRANCHES)):
        torch.testing.assert_close(out[:, i], expected, rtol=0, atol=1e-5)
        assert torch.equal(unet.branches[BRANCHES[i]].conv_in.weight, reference.conv_in.weight)


def test_ldm_writer_agrees_with_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    reference = build_tiny_sd_unet(seed=3)
    converted = convert_ldm_unet_checkpoint(ldm_unet_state_dict(reference), TINY.to_diffusers_unet_config())
    original = reference.state_dict()
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], original[k]) for k in original)


def test_init_refuses_the_wrong_kind_of_checkpoint(files, tmp_path):
    with pytest.raises(WrongModelFile, match="joint_unet_from_humansd"):
        joint_unet_from_sd21(files["humansd"], TINY)
    with pytest.raises(WrongModelFile, match="joint_unet_from_sd21"):
        joint_unet_from_humansd(files["sd_single"], TINY)
    with pytest.raises(WrongModelFile, match="already a DiffBody stage-1 joint UNet"):
        joint_unet_from_sd21(files["unet"], TINY)
    with pytest.raises(WrongModelFile, match="text context 32, expected 1024"):
        joint_unet_from_sd21(files["sd_single"])  # tiny weights against the real SD 2.1 sizes
    sd1 = build_tiny_sd_unet(config=dataclasses.replace(TINY, cross_attention_dim=768))
    from safetensors.torch import save_file

    save_file(ldm_unet_state_dict(sd1), str(tmp_path / "v1-5.safetensors"))
    with pytest.raises(WrongModelFile, match="Stable Diffusion 1.x"):
        joint_unet_from_sd21(str(tmp_path / "v1-5.safetensors"), TINY)
    with pytest.raises(WrongModelFile, match="does not have the sizes asked for"):
        joint_unet_from_sd21(files["sd_folder"], JointUNetConfig.sd21_base())
    with pytest.raises(WrongModelFile, match="neither unet/config.json"):
        joint_unet_from_sd21(str(tmp_path), TINY)
    with pytest.raises(MissingModelFile):
        joint_unet_from_sd21(str(tmp_path / "absent.safetensors"), TINY)


class _RunsCode:
    """Unpickling this would create a marker file: a stand-in for a malicious pickle."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_ckpt_files_are_read_with_weights_only(files, tmp_path):
    marker = tmp_path / "code-ran"
    payload = _RunsCode()
    payload.marker = str(marker)
    path = tmp_path / "humansd-v1.ckpt"
    state = torch.load(files["humansd"], map_location="cpu", weights_only=True)["state_dict"]
    torch.save({"state_dict": state, "callbacks": payload}, str(path))
    with pytest.raises(WrongModelFile, match="convert it once to safetensors") as error:
        joint_unet_from_humansd(str(path), TINY)
    assert "weights_only=False" in str(error.value) and "humansd-v1.safetensors" in str(error.value)
    assert not marker.exists()
    # A Lightning checkpoint of plain data loads, its "state_dict" unwrapped.
    assert any(k.startswith("model.diffusion_model.") for k in read_state_dict(files["humansd"]))
    # The converted file the message proposes is accepted.
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "humansd-v1.safetensors"))
    assert joint_unet_from_humansd(str(tmp_path / "humansd-v1.safetensors"), TINY).config == TINY


# ---- ControlNet ----------------------------------------------------------------------------------------

def test_zero_controlnet_leaves_the_unet_output_unchanged(files):
    unet = joint_unet_from_sd21(files["sd_single"], TINY)
    controlnet = Stage1ControlNet.from_unet(unet)
    noisy, pose, context, image_latent = inputs(seed=7)
    with torch.no_grad():
        base = unet(noisy, pose, T, context)
        residuals = controlnet(noisy, pose, T, context, image_latent)
        assert len(residuals.down) == unet.num_down_residuals == 9
        assert torch.equal(unet(noisy, pose, T, context, control=residuals), base)
    # its encoder is a copy of the UNet's (RGB branch + trunk)
    assert torch.equal(controlnet.conv_in.weight, unet.branches["rgb"].conv_in.weight)
    assert torch.equal(controlnet.down_blocks["0"].resnets[0].conv1.weight,
                       unet.branches["rgb"].first_down_block.resnets[0].conv1.weight)
    assert torch.equal(controlnet.mid_block.resnets[1].conv2.weight, unet.mid_block.resnets[1].conv2.weight)


def test_nonzero_controlnet_changes_the_output_and_scale_multiplies(stage1):
    unet, controlnet = stage1
    noisy, pose, context, image_latent = inputs(seed=8)
    with torch.no_grad():
        base = unet(noisy, pose, T, context)
        one = controlnet(noisy, pose, T, context, image_latent, scale=1.0)
        half = controlnet(noisy, pose, T, context, image_latent, scale=0.5)
        zero = controlnet(noisy, pose, T, context, image_latent, scale=0.0)
        controlled = unet(noisy, pose, T, context, control=one)
        other_image = controlnet(noisy, pose, T, context, image_latent.flip(-1))
        assert torch.equal(unet(noisy, pose, T, context, control=zero), base)
    assert (controlled - base).abs().mean() > 1e-3
    assert all((controlled[:, i] - base[:, i]).abs().mean() > 1e-4 for i in range(3))
    assert all(torch.allclose(h * 2, o, atol=1e-6) for h, o in zip(half.down + [half.mid], one.down + [one.mid]))
    assert not torch.allclose(other_image.mid, one.mid)  # c_r reaches the residuals


def test_residuals_land_on_the_documented_skips(stage1):
    """down[0..L] on every branch's own skips, down[L+1] on the merged feature's skip, the rest on the
    trunk's skips, mid on the mid output; the encoder itself runs unmodified."""
    unet, _ = stage1
    noisy, pose, context, _ = inputs(seed=9)
    seen = {}

    def spy(name):
        def hook(module, args, kwargs):
            seen[name] = (kwargs["hidden_states"], kwargs["res_hidden_states_tuple"])
        return hook

    n = TINY.num_levels
    handles = [unet.up_blocks[str(i)].register_forward_pre_hook(spy(f"trunk{i}"), with_kwargs=True)
               for i in range(n - 1)]
    handles += [unet.branches[b].last_up_block.register_forward_pre_hook(spy(b), with_kwargs=True) for b in BRANCHES]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        unet(noisy, pose, T, context)
        plain = dict(seen)
        shapes = [s.shape for i in reversed(range(n - 1)) for s in plain[f"trunk{i}"][1]]
        own = [s.shape for s in plain["rgb"][1]]
        control = Stage1ControlResiduals(down=[torch.randn(s, generator=g) for s in own + shapes],
                                         mid=torch.randn(plain["trunk0"][0].shape, generator=g))
        unet(noisy, pose, T, context, control=control)
    for handle in handles:
        handle.remove()
    lpb = TINY.layers_per_block
    for b in BRANCHES:
        for k in range(lpb + 1):
            torch.testing.assert_close(seen[b][1][k] - plain[b][1][k], control.down[k])
    trunk_seen = [s for i in reversed(range(n - 1)) for s in seen[f"trunk{i}"][1]]
    trunk_plain = [s for i in reversed(range(n - 1)) for s in plain[f"trunk{i}"][1]]
    for k, (after, before) in enumerate(zip(trunk_seen, trunk_plain)):
        torch.testing.assert_close(after - before, control.down[lpb + 1 + k])
    torch.testing.assert_close(seen["trunk0"][0] - plain["trunk0"][0], control.mid)


def test_controlnet_checks_its_inputs(stage1):
    unet, controlnet = stage1
    noisy, pose, context, image_latent = inputs()
    with pytest.raises(ValueError, match="image_latent must be"):
        controlnet(noisy, pose, T, context, image_latent[:, :, :4])
    residuals = controlnet(noisy, pose, T, context, image_latent)
    with pytest.raises(ValueError, match="down residuals"):
        unet(noisy, pose, T, context, control=Stage1ControlResiduals(residuals.down[:-1], residuals.mid))


# ---- our layout ----------------------------------------------------------------------------------------

def test_save_load_round_trip(files, stage1, tmp_path):
    unet, controlnet = stage1
    loaded_unet, loaded_cn = load_stage1_unet(files["unet"]), load_stage1_controlnet(files["controlnet"])
    assert loaded_unet.config == TINY and loaded_cn.config == TINY
    for mine, theirs in ((unet, loaded_unet), (controlnet, loaded_cn)):
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(p.requires_grad for p in loaded_unet.parameters())
    noisy, pose, context, image_latent = inputs(seed=10)
    with torch.no_grad():
        control = loaded_cn(noisy, pose, T, context, image_latent)
        assert torch.equal(loaded_unet(noisy, pose, T, context, control=control),
                           unet(noisy, pose, T, context, control=controlnet(noisy, pose, T, context, image_latent)))
    # half precision survives, and a dtype can be asked for
    path = save_stage1_unet(unet.half(), str(tmp_path / "half.safetensors"))
    unet.float()
    assert next(load_stage1_unet(path).parameters()).dtype == torch.float16
    assert next(load_stage1_unet(path, dtype=torch.float32).parameters()).dtype == torch.float32
    from safetensors import safe_open

    with safe_open(files["unet"], "pt") as f:
        metadata = f.metadata()
    assert metadata["diffbody_format"] == "stage1_unet" and metadata["format_version"] == "1"
    assert JointUNetConfig.from_dict(json.loads(metadata["config"])) == TINY


def test_loading_the_wrong_file_names_what_was_expected(files, stage1, tmp_path):
    cases = [
        (load_stage1_unet, files["controlnet"], "is a DiffBody stage-1 ControlNet"),
        (load_stage1_controlnet, files["unet"], "is a DiffBody stage-1 joint UNet"),
        (load_stage1_unet, files["sd_single"], "original-layout Stable Diffusion"),
        (load_stage1_unet, os.path.join(files["sd_folder"], "unet", "diffusion_pytorch_model.safetensors"),
         "is a diffusers UNet"),
        (load_stage1_unet, files["humansd"], "not a .safetensors file"),
    ]
    for loader, path, what in cases:
        with pytest.raises(WrongModelFile) as error:
            loader(path)
        message = str(error.value)
        assert what in message and os.path.basename(path) in message and "Expected a DiffBody stage-1" in message

    from safetensors.torch import save_file

    unet, _ = stage1
    state = {k: v.contiguous() for k, v in unet.state_dict().items()}
    metadata = {"diffbody_format": "stage1_unet", "format_version": "1", "config": TINY.to_json()}
    del state["branches.normal.conv_out.bias"]
    save_file(state, str(tmp_path / "truncated.safetensors"), metadata=metadata)
    with pytest.raises(WrongModelFile, match=r"1 missing tensor\(s\): branches.normal.conv_out.bias"):
        load_stage1_unet(str(tmp_path / "truncated.safetensors"))
    save_file(state, str(tmp_path / "future.safetensors"), metadata={**metadata, "format_version": "2"})
    with pytest.raises(WrongModelFile, match="format_version '2'"):
        load_stage1_unet(str(tmp_path / "future.safetensors"))
    bigger = dataclasses.replace(TINY, cross_attention_dim=64).to_json()
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(tmp_path / "sizes.safetensors"),
              metadata={**metadata, "config": bigger})
    with pytest.raises(WrongModelFile, match="wrong shape"):
        load_stage1_unet(str(tmp_path / "sizes.safetensors"))
    with pytest.raises(MissingModelFile):
        load_stage1_unet(str(tmp_path / "absent.safetensors"))
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(WrongModelFile, match="not a readable safetensors file"):
        load_stage1_unet(str(tmp_path / "garbage.safetensors"))


def test_init_command_writes_loadable_files(files, tmp_path):
    from comfyui_diffbody.models.stage1_weights import main

    unet_out, cn_out = str(tmp_path / "u.safetensors"), str(tmp_path / "c.safetensors")
    assert main([files["sd_folder"], "--unet-out", unet_out, "--controlnet-out", cn_out]) == 0
    unet, controlnet = load_stage1_unet(unet_out), load_stage1_controlnet(cn_out)
    assert all(torch.count_nonzero(c.weight) == 0 for c in controlnet.controlnet_down_blocks)
    assert torch.equal(controlnet.conv_in.weight, unet.branches["rgb"].conv_in.weight)
