"""Weights of DiffBody stage 1: initialisation from public checkpoints, and our own file layout.

Initialisation (no DiffBody weights are public; the paper starts stage 1 from SD 2.1-base):
- `joint_unet_from_sd21(source)`: Stable Diffusion 2.1-base. `source` is a diffusers folder (with
  `unet/config.json` and `unet/diffusion_pytorch_model.safetensors`, or the `unet` folder itself) or the
  original single file (`v2-1_512-ema-pruned.safetensors` / `.ckpt`, keys `model.diffusion_model.*`,
  converted with diffusers' own `convert_ldm_unet_checkpoint`). The SD UNet is copied into every branch
  and into the trunk; each branch's conv_in gets SD's 4 latent input channels and zeros for the 4 pose
  channels, so at the start every branch computes exactly what SD computes.
- `joint_unet_from_humansd(path)`: HumanSD's `humansd-v1.ckpt` (the SD 2.1-base UNet fine-tuned with an
  8-channel conv_in: noisy latent, then pose latent; eps-prediction; context 1024). Same copy, with
  HumanSD's 8-channel conv_in in every branch.
- `Stage1ControlNet.from_unet(unet)` (models/stage1_controlnet.py) initialises the ControlNet from the
  UNet's encoder; `init_stage1_files` writes both files in our layout (also `python -m
  comfyui_diffbody.models.stage1_weights --help`).
`.ckpt`/`.pt`/`.pth`/`.bin` files are read with `torch.load(weights_only=True)` only; a file that needs
full unpickling is refused with instructions to convert it to safetensors.

Our layout (`save_stage1_unet` / `load_stage1_unet`, `save_stage1_controlnet` / `load_stage1_controlnet`):
one `.safetensors` file per network, default names `diffbody_stage1_unet.safetensors` and
`diffbody_stage1_controlnet.safetensors` in `ComfyUI/models/diffbody/`.
- metadata (all strings): `diffbody_format` = "stage1_unet" | "stage1_controlnet", `format_version` = "1",
  `config` = the JSON of `JointUNetConfig.to_dict()` (both networks share the UNet's config).
- tensors: the module's `state_dict()`, float32, fp16 or bf16 as saved. UNet keys are diffusers'
  UNet2DConditionModel keys with the branch parts under `branches.<depth|normal|rgb>.` (`conv_in`,
  `down_blocks.0`, `up_blocks.<n-1>`, `conv_norm_out`, `conv_out`) and the trunk's blocks under their SD
  index (`down_blocks.1..n-1`, `mid_block`, `up_blocks.0..n-2`, `time_embedding`); branch conv_in
  weights are (C0, 8, 3, 3), input channels 0-3 the noisy latent and 4-7 the pose latent.
  ControlNet keys: `time_embedding.*`, `conv_in.*` (8 ch), `image_latent_in.*` (c_r, 4 ch),
  `down_blocks.0..n-1.*`, `mid_block.*`, `controlnet_down_blocks.<k>.*` (one 1x1 conv per skip, SD order),
  `controlnet_mid_block.*`.
Loading checks the metadata, the config and every key and shape, and raises WrongModelFile naming the
file and what was expected.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from .errors import MissingModelFile, WrongModelFile
from .loading import (FORMAT_KEY, LDM_UNET_PREFIX, check_state_dict, read_pack_config, read_pack_metadata,
                      read_state_dict, save_pack_file)
from .joint_unet import JointUNet, JointUNetConfig, sd_key_to_joint_keys
from .stage1_controlnet import Stage1ControlNet

UNET_FILENAME = "diffbody_stage1_unet.safetensors"
CONTROLNET_FILENAME = "diffbody_stage1_controlnet.safetensors"
UNET_FORMAT = "stage1_unet"
CONTROLNET_FORMAT = "stage1_controlnet"
DIFFUSERS_UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                          "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")
EXPECTED = {
    UNET_FORMAT: f"a DiffBody stage-1 joint UNet saved by this pack ({UNET_FILENAME}: safetensors with "
                 f"metadata {FORMAT_KEY}='{UNET_FORMAT}')",
    CONTROLNET_FORMAT: f"a DiffBody stage-1 ControlNet saved by this pack ({CONTROLNET_FILENAME}: safetensors "
                       f"with metadata {FORMAT_KEY}='{CONTROLNET_FORMAT}')",
}
SD21_EXPECTED = ("Stable Diffusion 2.1-base (a diffusers folder with unet/config.json, or "
                 "v2-1_512-ema-pruned.safetensors / .ckpt)")
HUMANSD_EXPECTED = "HumanSD's humansd-v1.ckpt (an SD 2.1-base UNet with an 8-channel conv_in)"


# ---- SD / HumanSD UNet weights in diffusers layout -----------------------------------------------------

def _locate_diffusers_unet(folder: str) -> tuple[str, str]:
    """(config.json, weights file) of a diffusers pipeline folder or of its `unet` folder."""
    unet_dir = os.path.join(folder, "unet") if os.path.isdir(os.path.join(folder, "unet")) else folder
    config_path = os.path.join(unet_dir, "config.json")
    if not os.path.isfile(config_path):
        raise WrongModelFile(f"DiffBody: '{folder}' is not a diffusers Stable Diffusion folder: it has neither "
                             f"unet/config.json nor config.json.\nExpected {SD21_EXPECTED}.")
    for name in DIFFUSERS_UNET_WEIGHTS:
        if os.path.isfile(os.path.join(unet_dir, name)):
            return config_path, os.path.join(unet_dir, name)
    raise MissingModelFile(f"DiffBody: '{unet_dir}' has no UNet weights (looked for "
                           f"{', '.join(DIFFUSERS_UNET_WEIGHTS)}).")


def _config_from_diffusers_json(config_path: str) -> JointUNetConfig:
    with open(config_path, encoding="utf-8") as f:
        unet_config = json.load(f)
    try:
        return JointUNetConfig.from_diffusers_unet_config(unet_config)
    except (ValueError, KeyError, TypeError) as e:
        raise WrongModelFile(f"DiffBody: the UNet in '{config_path}' cannot be a DiffBody stage-1 branch: {e}.\n"
                             f"Expected {SD21_EXPECTED}.") from e


def _check_not_ours(state_dict_keys, path: str, expected: str) -> None:
    if any(k.startswith("branches.") for k in state_dict_keys):
        raise WrongModelFile(f"DiffBody: '{os.path.basename(path)}' is already a DiffBody stage-1 joint UNet; "
                             f"load it with the DiffBody stage-1 loader instead.\nExpected {expected}.\n(file: {path})")


def _sd_unet_weights_from_file(path: str, config: JointUNetConfig, expected: str,
                               use_ema: bool) -> dict[str, torch.Tensor]:
    """A single-file UNet (original LDM layout, or a bare diffusers UNet state dict) in diffusers key layout."""
    state_dict = read_state_dict(path)
    _check_not_ours(state_dict, path, expected)
    if "time_embedding.linear_1.weight" in state_dict:  # already diffusers' layout
        return state_dict
    if not any(k.startswith(LDM_UNET_PREFIX) for k in state_dict):
        raise WrongModelFile(f"DiffBody: '{os.path.basename(path)}' holds no Stable Diffusion UNet (no "
                             f"'{LDM_UNET_PREFIX}*' keys).\nExpected {expected}.\n(file: {path})")
    _check_ldm_family(state_dict, config, path, expected)
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint(state_dict, config.to_diffusers_unet_config(), extract_ema=use_ema)


def _check_ldm_family(state_dict: dict, config: JointUNetConfig, path: str, expected: str) -> None:
    """Name the model family in the error when an SD 1.x / SDXL file is given for SD 2.1."""
    name = os.path.basename(path)
    if any(k.startswith(LDM_UNET_PREFIX + "label_emb.") for k in state_dict):
        raise WrongModelFile(f"DiffBody: '{name}' is an SDXL-style UNet (it has class/size embeddings).\n"
                             f"Expected {expected}.\n(file: {path})")
    key = LDM_UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    if key in state_dict and state_dict[key].shape[1] != config.cross_attention_dim:
        found = state_dict[key].shape[1]
        family = {768: "a Stable Diffusion 1.x", 2048: "an SDXL"}.get(found, "another kind of")
        raise WrongModelFile(f"DiffBody: '{name}' looks like {family} UNet (text context {found}, expected "
                             f"{config.cross_attention_dim}).\nExpected {expected}.\n(file: {path})")


def sd_unet_weights(source: str, config: JointUNetConfig | None = None, *, expected: str = SD21_EXPECTED,
                    use_ema: bool = True) -> tuple[dict[str, torch.Tensor], JointUNetConfig]:
    """The UNet weights of an SD-style model (diffusers folder or single file) in diffusers key layout,
    and the JointUNetConfig they fit (from the folder's config.json, else `config` or SD 2.1-base)."""
    if not os.path.exists(source):
        raise MissingModelFile(f"DiffBody: '{source}' does not exist.\nExpected {expected}.")
    if os.path.isdir(source):
        config_path, weights_path = _locate_diffusers_unet(source)
        folder_config = _config_from_diffusers_json(config_path)
        if config is not None and config != folder_config:
            raise WrongModelFile(f"DiffBody: the UNet in '{source}' does not have the sizes asked for: its "
                                 f"config.json gives {folder_config}, the caller asked for {config}.")
        state_dict = read_state_dict(weights_path)
        _check_not_ours(state_dict, weights_path, expected)
        return state_dict, folder_config
    config = config or JointUNetConfig.sd21_base()
    return _sd_unet_weights_from_file(source, config, expected, use_ema), config


# ---- building the joint UNet from one SD UNet ----------------------------------------------------------

def joint_state_dict_from_sd(sd_state_dict: dict[str, torch.Tensor],
                             config: JointUNetConfig) -> dict[str, torch.Tensor]:
    """Copy an SD UNet's weights (diffusers keys) into every branch and the trunk. A 4-channel conv_in is
    widened with zero pose channels; an 8-channel one (HumanSD) is copied as it is."""
    joint = {}
    for key, value in sd_state_dict.items():
        if key == "conv_in.weight" and value.shape[1] == config.latent_channels:
            pose = value.new_zeros(value.shape[0], config.pose_channels, *value.shape[2:])
            value = torch.cat([value, pose], dim=1)
        joint_keys = sd_key_to_joint_keys(key, config)
        for joint_key in joint_keys:
            # each branch gets its own tensor: the branches are trained apart from here on
            joint[joint_key] = value.clone() if len(joint_keys) > 1 else value
    return joint


def build_checked(cls, config: JointUNetConfig, state_dict: dict[str, torch.Tensor], source: str,
                  expected: str, dtype: torch.dtype | None, device: str | torch.device = "cpu"):
    """`cls(config)` with exactly `state_dict` (every key, every shape), else WrongModelFile."""
    with torch.device("meta"):
        model = cls(config)
    check_state_dict(model.state_dict(), state_dict, name=os.path.basename(source), expected=expected, path=source)
    if dtype is not None:
        state_dict = {k: v.to(dtype) for k, v in state_dict.items()}
    state_dict = {k: v.to(device) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def _conv_in_channels(sd_state_dict: dict[str, torch.Tensor], source: str, expected: str) -> int:
    weight = sd_state_dict.get("conv_in.weight")
    if weight is None or weight.ndim != 4:
        raise WrongModelFile(f"DiffBody: '{os.path.basename(source)}' has no UNet conv_in.\nExpected {expected}.")
    return weight.shape[1]


def joint_unet_from_sd21(source: str, config: JointUNetConfig | None = None, *,
                         dtype: torch.dtype | None = torch.float32, use_ema: bool = True) -> JointUNet:
    """A joint UNet whose three branches each equal the SD 2.1-base UNet at `source` (pose channels zero).

    `source`: a diffusers SD folder (or its unet folder), or the original single file (.safetensors/.ckpt).
    `config`: the network's sizes for a single file (default SD 2.1-base); a folder's sizes come from its
    config.json (a different `config` is refused).
    `use_ema`: for a full training checkpoint holding both, take the EMA weights (as LDM's inference does)."""
    sd, config = sd_unet_weights(source, config, expected=SD21_EXPECTED, use_ema=use_ema)
    channels = _conv_in_channels(sd, source, SD21_EXPECTED)
    if channels != config.latent_channels:
        hint = (" It looks like HumanSD (8 input channels): use joint_unet_from_humansd." if channels == 8
                else " (9 channels: an inpainting UNet.)" if channels == 9 else "")
        raise WrongModelFile(f"DiffBody: the UNet in '{os.path.basename(source)}' has {channels} input channels, "
                             f"not SD's {config.latent_channels}.{hint}\nExpected {SD21_EXPECTED}.")
    joint = joint_state_dict_from_sd(sd, config)
    return build_checked(JointUNet, config, joint, source, SD21_EXPECTED, dtype)


def joint_unet_from_humansd(path: str, config: JointUNetConfig | None = None, *,
                            dtype: torch.dtype | None = torch.float32, use_ema: bool = True) -> JointUNet:
    """A joint UNet whose three branches each equal HumanSD's UNet (its 8-channel conv_in in every branch).

    `path`: humansd-v1.ckpt (read with weights_only=True) or the same weights converted to .safetensors."""
    sd, config = sd_unet_weights(path, config, expected=HUMANSD_EXPECTED, use_ema=use_ema)
    channels = _conv_in_channels(sd, path, HUMANSD_EXPECTED)
    if channels != config.in_channels:
        hint = " (a plain SD UNet: use joint_unet_from_sd21)" if channels == config.latent_channels else ""
        raise WrongModelFile(f"DiffBody: the UNet in '{os.path.basename(path)}' has {channels} input channels, "
                             f"not HumanSD's {config.in_channels}{hint}.\nExpected {HUMANSD_EXPECTED}.")
    joint = joint_state_dict_from_sd(sd, config)
    return build_checked(JointUNet, config, joint, path, HUMANSD_EXPECTED, dtype)


# ---- our own layout ------------------------------------------------------------------------------------

def _save(model: torch.nn.Module, path: str, fmt: str) -> str:
    return save_pack_file(model, path, fmt, config_json=model.config.to_json())


def save_stage1_unet(unet: JointUNet, path: str) -> str:
    """Write `unet` to `path` in our layout (see the module docstring); returns `path`."""
    return _save(unet, path, UNET_FORMAT)


def save_stage1_controlnet(controlnet: Stage1ControlNet, path: str) -> str:
    """Write `controlnet` to `path` in our layout (see the module docstring); returns `path`."""
    return _save(controlnet, path, CONTROLNET_FORMAT)


def load_stage1_unet(path: str, *, device: str | torch.device = "cpu",
                     dtype: torch.dtype | None = None) -> JointUNet:
    """A JointUNet from our layout (eval mode). `dtype` None keeps the stored dtype."""
    return _load(path, UNET_FORMAT, JointUNet, device, dtype)


def load_stage1_controlnet(path: str, *, device: str | torch.device = "cpu",
                           dtype: torch.dtype | None = None) -> Stage1ControlNet:
    """A Stage1ControlNet from our layout (eval mode). `dtype` None keeps the stored dtype."""
    return _load(path, CONTROLNET_FORMAT, Stage1ControlNet, device, dtype)


def _load(path: str, fmt: str, cls, device, dtype):
    metadata = read_pack_metadata(path, fmt, EXPECTED[fmt], _describe_foreign)
    config = read_pack_config(metadata, JointUNetConfig, path, EXPECTED[fmt])
    state_dict = read_state_dict(path)
    return build_checked(cls, config, state_dict, path, EXPECTED[fmt], dtype, device)


def _describe_foreign(found: str | None, keys: list[str]) -> str:
    """What a file given to the wrong loader is, in words."""
    if found == UNET_FORMAT:
        return "a DiffBody stage-1 joint UNet"
    if found == CONTROLNET_FORMAT:
        return "a DiffBody stage-1 ControlNet"
    if found:
        return f"a DiffBody file of another kind ('{found}')"
    if any(k.startswith(LDM_UNET_PREFIX) for k in keys):
        return ("an original-layout Stable Diffusion / HumanSD checkpoint, not DiffBody weights (to start "
                "stage 1 from it, see init_stage1_files in models/stage1_weights.py)")
    if "time_embedding.linear_1.weight" in keys and "conv_in.weight" in keys:
        return "a diffusers UNet, not DiffBody weights"
    if any(k.startswith("controlnet_") for k in keys):
        return "a ControlNet of another kind, not DiffBody weights"
    return "not a DiffBody weights file (no 'diffbody_format' in its metadata)"


# ---- initialisation as a command -----------------------------------------------------------------------

def init_stage1_files(source: str, kind: str, unet_out: str, controlnet_out: str | None = None) -> list[str]:
    """Initialise stage 1 from a public checkpoint (`kind` "sd21" or "humansd") and write our files:
    the joint UNet to `unet_out` and, if given, the zero-initialised ControlNet to `controlnet_out`."""
    loaders = {"sd21": joint_unet_from_sd21, "humansd": joint_unet_from_humansd}
    if kind not in loaders:
        raise ValueError(f"kind must be one of {sorted(loaders)}")
    unet = loaders[kind](source)
    written = [save_stage1_unet(unet, unet_out)]
    if controlnet_out:
        written.append(save_stage1_controlnet(Stage1ControlNet.from_unet(unet), controlnet_out))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m comfyui_diffbody.models.stage1_weights",
        description="Initialise DiffBody stage-1 weights (joint UNet + ControlNet) from SD 2.1-base or HumanSD.")
    parser.add_argument("source", help="SD 2.1-base diffusers folder or single file, or humansd-v1.ckpt")
    parser.add_argument("--from", dest="kind", choices=("sd21", "humansd"), default="sd21")
    parser.add_argument("--unet-out", default=UNET_FILENAME)
    parser.add_argument("--controlnet-out", default=CONTROLNET_FILENAME, help="'' to skip the ControlNet")
    args = parser.parse_args(argv)
    for path in init_stage1_files(args.source, args.kind, args.unet_out, args.controlnet_out or None):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
