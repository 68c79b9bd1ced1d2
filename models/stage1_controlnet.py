"""DiffBody stage-1 ControlNet: feeds c_r, the VAE latent of the SwinIR output, into the frozen joint UNet.

Paper eq. 2: after the joint UNet is trained (eq. 1), a ControlNet taking c_r is trained with the UNet
frozen. Its encoder is a trainable copy of the UNet's encoder as seen by the RGB branch:

    x = conv_in(rgb noisy latent ++ pose latent) + image_latent_in(c_r)    (both 8->C0 / 4->C0, 3x3)
    down_blocks["0"] (copy of the RGB branch's first down block), down_blocks["1".."n-1"] (copies of the
    trunk's), mid_block (copy of the trunk's)
    one zero-initialised 1x1 conv per skip tensor (`controlnet_down_blocks`) and one on the mid output
    (`controlnet_mid_block`); `image_latent_in` is zero-initialised too ("hint" style, as ControlNet's
    zero-initialised condition embedding), so a fresh ControlNet changes nothing and training starts
    from the frozen UNet's behaviour.

How the residuals are applied by JointUNet.forward (Stage1ControlResiduals):
- `down` has one tensor per encoder skip, in SD's skip order (SD 2.1: 12). With L = layers_per_block:
  * down[0 .. L] (conv_in output and the first down block's resnet outputs) are added to the matching
    skip of EVERY branch (the same residual for depth, normal and RGB);
  * down[L + 1] (the first down block's downsampler output) is added to the merged feature where it is
    used as a skip, i.e. the input of the second-to-last (shared) up block;
  * down[L + 2 ..] are added to the trunk's skips (down blocks 1..n-1) one to one.
  As in diffusers' UNet2DConditionModel, residuals are added to the skip tensors only: the UNet's encoder
  itself runs on unmodified features.
- `mid` is added to the mid block's output before the up blocks.
Every residual has the shape of the skip it is added to: (B, C_level, h_level, w_level).
"""

from __future__ import annotations

import torch
from torch import nn

from .joint_unet import (RGB_INDEX, JointUNet, JointUNetConfig, Stage1ControlResiduals, build_conv_in,
                         build_down_block, build_mid_block, build_time_modules, run_down_block, run_mid_block,
                         timestep_embedding)
from .layers import enable_checkpointing, zero_conv


def skip_channels(config: JointUNetConfig) -> list[int]:
    """Channels of each encoder skip tensor, in SD's order."""
    channels = [config.block_out_channels[0]]
    for i, c in enumerate(config.block_out_channels):
        channels += [c] * config.layers_per_block
        if i != config.num_levels - 1:
            channels.append(c)  # downsampler output
    return channels


def encoder_state_dict(unet: JointUNet) -> dict[str, torch.Tensor]:
    """The UNet's encoder as the RGB branch sees it, under the ControlNet's key names."""
    rgb = unet.branches["rgb"]
    parts = {"time_embedding": unet.time_embedding, "conv_in": rgb.conv_in, "down_blocks.0": rgb.first_down_block,
             "mid_block": unet.mid_block}
    parts.update({f"down_blocks.{i}": unet.down_blocks[str(i)] for i in range(1, unet.config.num_levels)})
    return {f"{prefix}.{k}": v for prefix, module in parts.items() for k, v in module.state_dict().items()}


class Stage1ControlNet(nn.Module):
    """Encoder copy of the joint UNet (RGB branch view) that turns c_r into residuals for the UNet."""

    def __init__(self, config: JointUNetConfig):
        super().__init__()
        self.config = config
        self.time_proj, self.time_embedding = build_time_modules(config)
        self.conv_in = build_conv_in(config)
        self.image_latent_in = nn.Conv2d(config.latent_channels, config.block_out_channels[0], 3, padding=1)
        nn.init.zeros_(self.image_latent_in.weight)
        nn.init.zeros_(self.image_latent_in.bias)
        self.down_blocks = nn.ModuleDict({str(i): build_down_block(config, i) for i in range(config.num_levels)})
        self.mid_block = build_mid_block(config)
        self.controlnet_down_blocks = nn.ModuleList([zero_conv(c) for c in skip_channels(config)])
        self.controlnet_mid_block = zero_conv(config.block_out_channels[-1])

    @classmethod
    def from_unet(cls, unet: JointUNet) -> "Stage1ControlNet":
        """A ControlNet whose encoder is a copy of `unet`'s (RGB branch's conv_in and first down block,
        the trunk's other down blocks and mid block, the time embedding), with all zero convs at zero."""
        reference = next(unet.parameters())
        with torch.device("meta"):
            controlnet = cls(unet.config)
        controlnet.to_empty(device=reference.device).to(reference.dtype)
        zero = {k: torch.zeros_like(v, device=reference.device, dtype=reference.dtype)
                for k, v in controlnet.state_dict().items()
                if k.startswith(("image_latent_in.", "controlnet_down_blocks.", "controlnet_mid_block."))}
        # strict: every tensor comes from the UNet or is a zero conv, none is left uninitialised.
        controlnet.load_state_dict({**zero, **encoder_state_dict(unet)}, strict=True)
        return controlnet

    def zero_control_convs(self) -> None:
        """Set the condition input conv and every output zero conv to zero (a ControlNet that does nothing)."""
        with torch.no_grad():
            for conv in (self.image_latent_in, self.controlnet_mid_block, *self.controlnet_down_blocks):
                conv.weight.zero_()
                conv.bias.zero_()

    def enable_gradient_checkpointing(self) -> None:
        enable_checkpointing(self)

    def forward(self, noisy: torch.Tensor, pose_latent: torch.Tensor, timestep, context: torch.Tensor,
                image_latent: torch.Tensor, scale: float = 1.0) -> Stage1ControlResiduals:
        """Residuals for JointUNet.forward from the same `noisy` (B, 3, 4, h, w), `pose_latent`, `timestep` and
        `context` the UNet gets, plus `image_latent` c_r (B, 4, h, w); `scale` multiplies every residual."""
        batch = noisy.shape[0]
        if tuple(image_latent.shape) != (batch, self.config.latent_channels, *noisy.shape[-2:]):
            raise ValueError(f"image_latent must be (B, {self.config.latent_channels}, h, w) like the noisy latents "
                             f"{tuple(noisy.shape)}; got {tuple(image_latent.shape)}")
        emb = timestep_embedding(self.time_proj, self.time_embedding, timestep, batch, noisy)
        x = self.conv_in(torch.cat([noisy[:, RGB_INDEX], pose_latent.to(noisy.dtype)], dim=1))
        h = x + self.image_latent_in(image_latent.to(noisy.dtype))
        skips = [h]
        for i in range(self.config.num_levels):
            h, res = run_down_block(self.down_blocks[str(i)], h, emb, context)
            skips.extend(res)
        h = run_mid_block(self.mid_block, h, emb, context)
        down = [conv(s) * scale for conv, s in zip(self.controlnet_down_blocks, skips, strict=True)]
        return Stage1ControlResiduals(down=down, mid=self.controlnet_mid_block(h) * scale)
