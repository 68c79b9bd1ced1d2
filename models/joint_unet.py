"""DiffBody stage-1 network: a Stable-Diffusion-2.1-base UNet with three expert branches (HyperHuman style).

The three branches predict the noise of the depth, normal and RGB latents (`BRANCHES`, the order of the
branch axis everywhere). Each branch owns the layers nearest to the pixels; the rest is one shared trunk:

    per branch b:  conv_in (8 ch: noisy latent of b ++ pose latent) -> down_blocks["0"]
    merge:         mean over the three branches of the first down block's output (its downsampler output)
    shared trunk:  down_blocks["1".."n-1"] -> mid_block -> up_blocks["0".."n-2"]
    per branch b:  up_blocks[str(n-1)] -> conv_norm_out -> SiLU -> conv_out  => eps_b

Skip connections follow SD's wiring exactly. The branch's own skips (conv_in output and the first down
block's resnet outputs) go to that branch's last up block. The first down block's downsampler output
is consumed by the second-to-last (shared) up block; it gets the merged feature, the same tensor the
trunk's encoder continues from. The merge is a plain average: three identical branches given the same
input (as after initialisation from one SD UNet) then reproduce that UNet exactly. (One public
HyperHuman reimplementation first rescales the depth/normal features to the RGB feature statistics;
the paper does not say, and a plain mean keeps the initialisation exact.)

Module names mirror diffusers' UNet2DConditionModel inside every part, and the down/up blocks are held
in ModuleDicts keyed by SD's block index, so SD state-dict keys map 1:1: a key of a branch part
(`conv_in.*`, `down_blocks.0.*`, `up_blocks.<n-1>.*`, `conv_norm_out.*`, `conv_out.*`) becomes
`branches.<branch>.<key>` for each branch; every other key is unchanged (`sd_key_to_joint_keys`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .layers import enable_checkpointing
from .loading import PackConfig

BRANCHES = ("depth", "normal", "rgb")
RGB_INDEX = BRANCHES.index("rgb")


@dataclass
class Stage1ControlResiduals:
    """Stage-1 ControlNet residuals for JointUNet.forward (models/stage1_controlnet.py's docstring says
    where each is added). Defined here, with the network that consumes them, so that the ControlNet
    imports the UNet and never the other way round."""

    down: list[torch.Tensor]
    mid: torch.Tensor


@dataclass
class JointUNetConfig(PackConfig):
    """Every hyper-parameter of the joint UNet. Field names and meanings follow diffusers'
    UNet2DConditionModel config; `attention_head_dim` keeps diffusers' (mis)naming: it is the NUMBER of
    attention heads per block, as in SD 2.1's config.json."""

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_head_dim: tuple[int, ...] = (5, 10, 20, 20)
    cross_attention_dim: int = 1024
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                         "DownBlock2D")
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                       "CrossAttnUpBlock2D")
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    use_linear_projection: bool = True
    upcast_attention: bool = False
    transformer_layers_per_block: int = 1
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    act_fn: str = "silu"
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    dropout: float = 0.0
    sample_size: int = 64
    latent_channels: int = 4
    pose_channels: int = 4
    _TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ("block_out_channels", "attention_head_dim", "down_block_types",
                                                "up_block_types")

    def __post_init__(self):
        for name in self._TUPLE_FIELDS:
            setattr(self, name, tuple(getattr(self, name)))
        n = len(self.block_out_channels)
        if n < 2:
            raise ValueError("JointUNetConfig needs at least two resolution levels (the branch level and the trunk).")
        if not (len(self.down_block_types) == len(self.up_block_types) == len(self.attention_head_dim) == n):
            raise ValueError("JointUNetConfig: block_out_channels, attention_head_dim, down_block_types and "
                             "up_block_types must have the same length.")

    @classmethod
    def sd21_base(cls) -> "JointUNetConfig":
        """Stable Diffusion 2.1-base's UNet sizes (stabilityai/stable-diffusion-2-1-base, unet/config.json)."""
        return cls()

    @classmethod
    def tiny(cls) -> "JointUNetConfig":
        """A tiny network of the same structure (three levels, cross-attention, linear projections) for tests."""
        return cls(block_out_channels=(32, 64, 64), attention_head_dim=(2, 4, 4), cross_attention_dim=32,
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                   norm_num_groups=8, sample_size=16)

    @property
    def num_levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def in_channels(self) -> int:
        return self.latent_channels + self.pose_channels

    def to_diffusers_unet_config(self, in_channels: int | None = None) -> dict[str, Any]:
        """The matching diffusers UNet2DConditionModel config (for one branch as a plain UNet)."""
        return dict(
            sample_size=self.sample_size, in_channels=self.latent_channels if in_channels is None else in_channels,
            out_channels=self.latent_channels, flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift,
            down_block_types=list(self.down_block_types), mid_block_type=self.mid_block_type,
            up_block_types=list(self.up_block_types), block_out_channels=list(self.block_out_channels),
            layers_per_block=self.layers_per_block, downsample_padding=self.downsample_padding,
            mid_block_scale_factor=self.mid_block_scale_factor, dropout=self.dropout, act_fn=self.act_fn,
            norm_num_groups=self.norm_num_groups, norm_eps=self.norm_eps,
            cross_attention_dim=self.cross_attention_dim,
            transformer_layers_per_block=self.transformer_layers_per_block,
            attention_head_dim=list(self.attention_head_dim), use_linear_projection=self.use_linear_projection,
            upcast_attention=self.upcast_attention)

    @classmethod
    def from_diffusers_unet_config(cls, unet_config: dict[str, Any], *, pose_channels: int = 4) -> "JointUNetConfig":
        """Our config for a diffusers UNet2DConditionModel config.json of the SD 1.x/2.x kind.

        Raises ValueError naming the first setting this network does not reproduce (class or addition
        embeddings as in SDXL, per-block layer counts, ...)."""
        unsupported = {"class_embed_type": None, "addition_embed_type": None, "num_class_embeds": None,
                       "encoder_hid_dim": None, "time_cond_proj_dim": None, "dual_cross_attention": False,
                       "only_cross_attention": False, "center_input_sample": False,
                       "resnet_time_scale_shift": "default", "time_embedding_type": "positional",
                       "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None,
                       "conv_in_kernel": 3, "conv_out_kernel": 3, "num_attention_heads": None,
                       "attention_type": "default", "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
                       "cross_attention_norm": None, "reverse_transformer_layers_per_block": None}
        for key, plain in unsupported.items():
            if unet_config.get(key, plain) != plain:
                raise ValueError(f"the UNet config sets {key}={unet_config[key]!r}; the joint UNet supports "
                                 f"only {plain!r} (an SD 1.x/2.x-style UNet)")
        n = len(unet_config["block_out_channels"])
        heads = unet_config.get("attention_head_dim", 8)
        heads = [heads] * n if isinstance(heads, int) else list(heads)
        for key in ("layers_per_block", "transformer_layers_per_block", "cross_attention_dim"):
            if not isinstance(unet_config.get(key, 1), int):
                raise ValueError(f"the UNet config's {key} is per block ({unet_config[key]!r}); "
                                 "the joint UNet supports one value for all blocks")
        latent = unet_config.get("out_channels", 4)
        if unet_config.get("in_channels", 4) not in (latent, latent + pose_channels):
            raise ValueError(f"the UNet config has in_channels={unet_config['in_channels']}; expected {latent} "
                             f"(a plain SD UNet) or {latent + pose_channels} (HumanSD: latent + pose)")
        defaults = cls()
        return cls(
            block_out_channels=unet_config["block_out_channels"], attention_head_dim=heads,
            layers_per_block=unet_config.get("layers_per_block", 2),
            cross_attention_dim=unet_config.get("cross_attention_dim", 1280),
            down_block_types=unet_config["down_block_types"], up_block_types=unet_config["up_block_types"],
            mid_block_type=unet_config.get("mid_block_type", defaults.mid_block_type),
            use_linear_projection=unet_config.get("use_linear_projection", False),
            upcast_attention=unet_config.get("upcast_attention", False),
            transformer_layers_per_block=unet_config.get("transformer_layers_per_block", 1),
            norm_num_groups=unet_config.get("norm_num_groups", 32), norm_eps=unet_config.get("norm_eps", 1e-5),
            act_fn=unet_config.get("act_fn", "silu"), flip_sin_to_cos=unet_config.get("flip_sin_to_cos", True),
            freq_shift=unet_config.get("freq_shift", 0), downsample_padding=unet_config.get("downsample_padding", 1),
            mid_block_scale_factor=unet_config.get("mid_block_scale_factor", 1.0),
            dropout=unet_config.get("dropout", 0.0), sample_size=unet_config.get("sample_size", 64) or 64,
            latent_channels=unet_config.get("out_channels", 4), pose_channels=pose_channels)


# ---- building blocks, wired exactly as diffusers' UNet2DConditionModel wires them -----------------------

def time_embed_dim(config: JointUNetConfig) -> int:
    return config.block_out_channels[0] * 4


def build_time_modules(config: JointUNetConfig) -> tuple[nn.Module, nn.Module]:
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps

    c0 = config.block_out_channels[0]
    return (Timesteps(c0, config.flip_sin_to_cos, config.freq_shift),
            TimestepEmbedding(c0, time_embed_dim(config), act_fn=config.act_fn))


def build_conv_in(config: JointUNetConfig) -> nn.Conv2d:
    return nn.Conv2d(config.in_channels, config.block_out_channels[0], kernel_size=3, padding=1)


def build_down_block(config: JointUNetConfig, i: int) -> nn.Module:
    from diffusers.models.unets.unet_2d_blocks import get_down_block

    channels = config.block_out_channels
    return get_down_block(
        config.down_block_types[i], num_layers=config.layers_per_block,
        transformer_layers_per_block=config.transformer_layers_per_block,
        in_channels=channels[max(i - 1, 0)], out_channels=channels[i], temb_channels=time_embed_dim(config),
        add_downsample=i != config.num_levels - 1, resnet_eps=config.norm_eps, resnet_act_fn=config.act_fn,
        resnet_groups=config.norm_num_groups, cross_attention_dim=config.cross_attention_dim,
        num_attention_heads=config.attention_head_dim[i], downsample_padding=config.downsample_padding,
        use_linear_projection=config.use_linear_projection, upcast_attention=config.upcast_attention,
        attention_head_dim=config.attention_head_dim[i], dropout=config.dropout)


def build_mid_block(config: JointUNetConfig) -> nn.Module:
    from diffusers.models.unets.unet_2d_blocks import get_mid_block

    return get_mid_block(
        config.mid_block_type, temb_channels=time_embed_dim(config), in_channels=config.block_out_channels[-1],
        resnet_eps=config.norm_eps, resnet_act_fn=config.act_fn, resnet_groups=config.norm_num_groups,
        output_scale_factor=config.mid_block_scale_factor,
        transformer_layers_per_block=config.transformer_layers_per_block,
        num_attention_heads=config.attention_head_dim[-1], cross_attention_dim=config.cross_attention_dim,
        use_linear_projection=config.use_linear_projection, upcast_attention=config.upcast_attention,
        attention_head_dim=config.attention_head_dim[-1], dropout=config.dropout)


def build_up_block(config: JointUNetConfig, i: int) -> nn.Module:
    from diffusers.models.unets.unet_2d_blocks import get_up_block

    reversed_channels = list(reversed(config.block_out_channels))
    n = config.num_levels
    return get_up_block(
        config.up_block_types[i], num_layers=config.layers_per_block + 1,
        transformer_layers_per_block=config.transformer_layers_per_block,
        in_channels=reversed_channels[min(i + 1, n - 1)], out_channels=reversed_channels[i],
        prev_output_channel=reversed_channels[max(i - 1, 0)], temb_channels=time_embed_dim(config),
        add_upsample=i != n - 1, resnet_eps=config.norm_eps, resnet_act_fn=config.act_fn, resolution_idx=i,
        resnet_groups=config.norm_num_groups, cross_attention_dim=config.cross_attention_dim,
        num_attention_heads=list(reversed(config.attention_head_dim))[i],
        use_linear_projection=config.use_linear_projection, upcast_attention=config.upcast_attention,
        # diffusers passes the un-reversed list here; mirrored so every block is built identically.
        attention_head_dim=config.attention_head_dim[i], dropout=config.dropout)


def run_down_block(block: nn.Module, h, emb, context) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=h, temb=emb, encoder_hidden_states=context)
    return block(hidden_states=h, temb=emb)


def run_mid_block(block: nn.Module, h, emb, context) -> torch.Tensor:
    if getattr(block, "has_cross_attention", False):
        return block(h, emb, encoder_hidden_states=context)
    return block(h, emb)


def run_up_block(block: nn.Module, h, emb, context, skips: tuple, upsample_size) -> torch.Tensor:
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=h, temb=emb, res_hidden_states_tuple=skips, encoder_hidden_states=context,
                     upsample_size=upsample_size)
    return block(hidden_states=h, temb=emb, res_hidden_states_tuple=skips, upsample_size=upsample_size)


def timestep_embedding(time_proj: nn.Module, time_embedding: nn.Module, timestep, batch: int,
                       like: torch.Tensor) -> torch.Tensor:
    """(batch, time_embed_dim) embedding of one timestep per sample (a scalar is broadcast)."""
    t = timestep if torch.is_tensor(timestep) else torch.tensor(timestep)
    t = t.to(like.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    elif t.numel() != batch:
        raise ValueError(f"timestep has {t.numel()} values for a batch of {batch}")
    # Timesteps always returns float32; the embedding MLP runs in the model's dtype.
    return time_embedding(time_proj(t).to(like.dtype))


# ---- the network ---------------------------------------------------------------------------------------

class JointBranch(nn.Module):
    """The per-branch parts of the joint UNet, named as in an SD UNet."""

    def __init__(self, config: JointUNetConfig):
        super().__init__()
        from diffusers.models.activations import get_activation

        last = config.num_levels - 1
        self.conv_in = build_conv_in(config)
        self.down_blocks = nn.ModuleDict({"0": build_down_block(config, 0)})
        self.up_blocks = nn.ModuleDict({str(last): build_up_block(config, last)})
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, config.block_out_channels[0], eps=config.norm_eps)
        self.conv_act = get_activation(config.act_fn)
        self.conv_out = nn.Conv2d(config.block_out_channels[0], config.latent_channels, kernel_size=3, padding=1)

    @property
    def first_down_block(self) -> nn.Module:
        return self.down_blocks["0"]

    @property
    def last_up_block(self) -> nn.Module:
        return next(iter(self.up_blocks.values()))


def branch_key_prefixes(config: JointUNetConfig) -> tuple[str, ...]:
    """SD UNet state-dict key prefixes that belong to a branch (the others belong to the shared trunk)."""
    return ("conv_in.", "down_blocks.0.", f"up_blocks.{config.num_levels - 1}.", "conv_norm_out.", "conv_out.")


def sd_key_to_joint_keys(key: str, config: JointUNetConfig) -> list[str]:
    """The joint-UNet key(s) that an SD (diffusers) UNet key maps to: one per branch for branch parts."""
    if key.startswith(branch_key_prefixes(config)):
        return [f"branches.{b}.{key}" for b in BRANCHES]
    return [key]


class JointUNet(nn.Module):
    """Three-branch (depth, normal, RGB) UNet over a shared SD trunk; see the module docstring."""

    def __init__(self, config: JointUNetConfig):
        super().__init__()
        self.config = config
        n = config.num_levels
        self.time_proj, self.time_embedding = build_time_modules(config)
        self.down_blocks = nn.ModuleDict({str(i): build_down_block(config, i) for i in range(1, n)})
        self.mid_block = build_mid_block(config)
        self.up_blocks = nn.ModuleDict({str(i): build_up_block(config, i) for i in range(n - 1)})
        self.branches = nn.ModuleDict({b: JointBranch(config) for b in BRANCHES})

    def enable_gradient_checkpointing(self) -> None:
        enable_checkpointing(self)

    @property
    def num_down_residuals(self) -> int:
        """How many skip tensors the encoder produces (SD 2.1: 12), i.e. len(Stage1ControlResiduals.down)."""
        return 1 + self.config.num_levels * self.config.layers_per_block + self.config.num_levels - 1

    def forward(self, noisy: torch.Tensor, pose_latent: torch.Tensor, timestep, context: torch.Tensor,
                control: Stage1ControlResiduals | None = None) -> torch.Tensor:
        """Predicted noise (B, 3, latent_channels, h, w) for the noisy depth/normal/RGB latents `noisy`
        (B, 3, latent_channels, h, w, branch axis in BRANCHES order), the pose latent (B, pose_channels, h, w),
        one timestep for all branches ((B,) or scalar) and text features `context` (B, L, cross_attention_dim).
        `control` holds ControlNet residuals (see Stage1ControlResiduals for where each is added)."""
        self._check_inputs(noisy, pose_latent)
        batch, size = noisy.shape[0], tuple(noisy.shape[-2:])
        emb = timestep_embedding(self.time_proj, self.time_embedding, timestep, batch, noisy)
        branch_res, merged_res, trunk_res, mid_res = self._split_control(control)

        own_skips, features = {}, []
        for i, name in enumerate(BRANCHES):
            branch = self.branches[name]
            x = branch.conv_in(torch.cat([noisy[:, i], pose_latent.to(noisy.dtype)], dim=1))
            feature, res = run_down_block(branch.first_down_block, x, emb, context)
            # res = (resnet outputs..., downsampler output); the downsampler output is `feature` itself.
            own_skips[name] = _add((x,) + tuple(res[:-1]), branch_res)
            features.append(feature)

        h = torch.stack(features).mean(dim=0)
        trunk_skips = [h if merged_res is None else h + merged_res]
        for i in range(1, self.config.num_levels):
            h, res = run_down_block(self.down_blocks[str(i)], h, emb, context)
            trunk_skips.extend(res)
        trunk_skips[1:] = _add(tuple(trunk_skips[1:]), trunk_res)
        h = run_mid_block(self.mid_block, h, emb, context)
        if mid_res is not None:
            h = h + mid_res

        # As diffusers: when h or w is not a multiple of the total downsampling, upsample to the skip's size.
        forced = any(d % 2 ** (self.config.num_levels - 1) for d in size)
        for i in range(self.config.num_levels - 1):
            block = self.up_blocks[str(i)]
            k = len(block.resnets)
            skips, trunk_skips = tuple(trunk_skips[-k:]), trunk_skips[:-k]
            target = (tuple(trunk_skips[-1].shape[-2:]) if trunk_skips else size) if forced else None
            h = run_up_block(block, h, emb, context, skips, target)

        outputs = []
        for name in BRANCHES:
            branch = self.branches[name]
            y = run_up_block(branch.last_up_block, h, emb, context, own_skips[name], None)
            outputs.append(branch.conv_out(branch.conv_act(branch.conv_norm_out(y))))
        return torch.stack(outputs, dim=1)

    def _split_control(self, control: Stage1ControlResiduals | None):
        """(branch skip residuals, merged-feature residual, trunk skip residuals, mid residual), or Nones."""
        if control is None:
            return None, None, None, None
        if len(control.down) != self.num_down_residuals:
            raise ValueError(f"control has {len(control.down)} down residuals; this UNet has "
                             f"{self.num_down_residuals} skips")
        n_own = self.config.layers_per_block + 1
        return (tuple(control.down[:n_own]), control.down[n_own], tuple(control.down[n_own + 1:]), control.mid)

    def _check_inputs(self, noisy: torch.Tensor, pose_latent: torch.Tensor) -> None:
        c = self.config
        if noisy.ndim != 5 or noisy.shape[1] != len(BRANCHES) or noisy.shape[2] != c.latent_channels:
            raise ValueError(f"noisy must be (B, {len(BRANCHES)}, {c.latent_channels}, h, w) "
                             f"(branches {BRANCHES}); got {tuple(noisy.shape)}")
        expected = (noisy.shape[0], c.pose_channels, *noisy.shape[-2:])
        if tuple(pose_latent.shape) != expected:
            raise ValueError(f"pose_latent must be {expected}; got {tuple(pose_latent.shape)}")


def _add(tensors: tuple, residuals: tuple | None) -> tuple:
    if residuals is None:
        return tensors
    return tuple(t + r for t, r in zip(tensors, residuals, strict=True))
