"""DiffBody stage 2's multi-prior ControlNet: a trainable copy of SDXL's encoder guided by four priors.

The paper (section 3.3) feeds the ControlNet
    c_g = a1*F1(I_ir) + a2*F2(I_pose) + a3*F3(I_depth) + a4*F4(I_normal)
where each F_i is a small CNN and a fusion layer combines the four. Here F_i = conv_out o f_i: every prior
has its own extractor f_i (diffusers' ControlNetConditioningEmbedding without its last conv: image space,
3 channels -> 8x smaller, `conditioning_embedding_out_channels[-1]` features) and the fusion layer is ONE
shared, zero-initialised 3x3 conv (`conv_out`) applied to the strength-weighted sum:
    c_g = conv_out(a1*f1(I_ir) + a2*f2(I_pose) + a3*f3(I_depth) + a4*f4(I_normal)).
The conv is linear, so this is exactly the paper's sum with F_i = conv_out o f_i (plus conv_out's bias),
and a diffusers ControlNet's `controlnet_cond_embedding` maps onto extractor "image" + `conv_out` 1:1.

Everything else mirrors diffusers' ControlNetModel module for module (conv_in, time_proj,
time_embedding, add_embedding, down_blocks, mid_block, controlnet_down_blocks, controlnet_mid_block), so
`from_unet` copies SDXL's encoder weights key for key, and a diffusers-trained checkpoint differs only
under `controlnet_cond_embedding.`.

Strengths all zero means "no control": `embed_priors` then returns exact zeros without running anything,
and callers must skip the ControlNet altogether (`is_active(strengths)` is False). Running the encoder on
c_g = 0 would still add residuals computed from the noisy latent, which a trained ControlNet makes
non-zero; skipping is what makes the UNet's output exactly the unconditioned one. `forward` with
`conditioning_scale == 0` likewise returns exact zero residuals without running the encoder.

The added vector `y` is SDXL's ADM input as ComfyUI builds it: cat(pooled text embedding, the six
micro-conditioning ids (height, width, crop top, crop left, target height, target width) each
sinusoidally embedded to 256 with cos first); `sdxl_added_vector` builds it on the diffusers side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .layers import enable_checkpointing, zero_conv
from .loading import PackConfig
from .unet_layout import SDXL_UNET_CONFIG

PRIORS = ("image", "pose", "depth", "normal")
VAE_SCALE = 8  # SDXL's VAE: the extractors must reduce image space by exactly this factor
ADD_TIME_DIM = 256  # SDXL embeds each of its 6 micro-conditioning ids to 256 (ComfyUI hard-codes it too)
NUM_TIME_IDS = 6

@dataclass
class MultiPriorControlNetConfig(PackConfig):
    """Sizes of the ControlNet: SDXL's encoder layout plus the prior extractors."""

    in_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    layers_per_block: int = 2
    transformer_layers_per_block: tuple[int, ...] = (1, 2, 10)  # the mid block uses the last one
    num_attention_heads: tuple[int, ...] = (5, 10, 20)
    cross_attention_dim: int = 2048
    projection_class_embeddings_input_dim: int = 2816  # pooled text + 6 * 256
    use_linear_projection: bool = True
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    upcast_attention: bool = False
    conditioning_channels: int = 3
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    priors: tuple[str, ...] = PRIORS

    @classmethod
    def sdxl(cls) -> "MultiPriorControlNetConfig":
        """The real size: SDXL 1.0 base's encoder."""
        return cls.from_unet_config(SDXL_UNET_CONFIG)

    @classmethod
    def tiny(cls) -> "MultiPriorControlNetConfig":
        """Matches `testing.tiny.stage2.tiny_sdxl_unet_config()` (kept here so models/ needs no testing/)."""
        return cls(block_out_channels=(32, 64, 128), transformer_layers_per_block=(1, 1, 1),
                   num_attention_heads=(1, 1, 2), cross_attention_dim=64,
                   projection_class_embeddings_input_dim=32 + NUM_TIME_IDS * ADD_TIME_DIM,
                   conditioning_embedding_out_channels=(8, 16, 16, 32))

    @classmethod
    def from_unet_config(cls, unet_config: Mapping[str, Any], **overrides) -> "MultiPriorControlNetConfig":
        """The encoder sizes of a diffusers SDXL-layout UNet config (`unet.config` or its config.json)."""
        _check_sdxl_layout(unet_config)
        levels = len(unet_config["block_out_channels"])
        heads = unet_config.get("num_attention_heads") or unet_config["attention_head_dim"]
        depth = unet_config.get("transformer_layers_per_block", 1)
        values = dict(
            in_channels=unet_config["in_channels"],
            block_out_channels=tuple(unet_config["block_out_channels"]),
            down_block_types=tuple(unet_config["down_block_types"]),
            layers_per_block=unet_config["layers_per_block"],
            transformer_layers_per_block=_per_level(depth, levels, "transformer_layers_per_block"),
            num_attention_heads=_per_level(heads, levels, "num_attention_heads"),
            cross_attention_dim=unet_config["cross_attention_dim"],
            projection_class_embeddings_input_dim=unet_config["projection_class_embeddings_input_dim"],
            use_linear_projection=bool(unet_config.get("use_linear_projection", False)),
            norm_num_groups=unet_config.get("norm_num_groups", 32),
            norm_eps=unet_config.get("norm_eps", 1e-5),
            flip_sin_to_cos=unet_config.get("flip_sin_to_cos", True),
            freq_shift=unet_config.get("freq_shift", 0),
            upcast_attention=bool(unet_config.get("upcast_attention") or False),
        )
        values.update(overrides)
        return cls(**values)

    def encoder_matches(self, other: "MultiPriorControlNetConfig") -> bool:
        """Whether the copied-from-UNet part has the same sizes (the prior extractors may differ)."""
        own = {k: v for k, v in self.to_dict().items() if k not in _EXTRACTOR_FIELDS}
        theirs = {k: v for k, v in other.to_dict().items() if k not in _EXTRACTOR_FIELDS}
        return own == theirs


_EXTRACTOR_FIELDS = {"conditioning_channels", "conditioning_embedding_out_channels", "priors"}


def _per_level(value, levels: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * levels
    value = tuple(value)
    if len(value) != levels or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{name} must be an int or one int per level, got {value!r}")
    return value


def _check_sdxl_layout(unet_config: Mapping[str, Any]) -> None:
    """Refuse UNet configs this ControlNet cannot copy (it implements SDXL's text_time conditioning only)."""
    problems = []
    if unet_config.get("addition_embed_type") != "text_time":
        problems.append(f"addition_embed_type is {unet_config.get('addition_embed_type')!r}, not 'text_time' (SDXL)")
    if unet_config.get("addition_time_embed_dim", ADD_TIME_DIM) != ADD_TIME_DIM:
        problems.append(f"addition_time_embed_dim is {unet_config.get('addition_time_embed_dim')}, not {ADD_TIME_DIM}")
    if unet_config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        problems.append(f"mid_block_type is {unet_config.get('mid_block_type')!r}")
    for key in ("class_embed_type", "encoder_hid_dim_type", "time_cond_proj_dim", "num_class_embeds"):
        if unet_config.get(key) is not None:
            problems.append(f"{key} is set ({unet_config.get(key)!r})")
    if unet_config.get("resnet_time_scale_shift", "default") != "default":
        problems.append("resnet_time_scale_shift is not 'default'")
    if not isinstance(unet_config.get("layers_per_block"), int):
        problems.append("layers_per_block is not a single int")
    if problems:
        raise ValueError("not an SDXL-layout UNet config: " + "; ".join(problems))


class PriorExtractor(nn.Module):
    """f_i: diffusers' ControlNetConditioningEmbedding minus its last conv (3x3 convs, SiLU, stride-2
    steps); image space (B,3,H,W) -> (B, channels[-1], H/8, W/8).

    `conv` builds the convolutions (torch's Conv2d; ComfyUI's ops class for the native ControlNet)."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], conv=nn.Conv2d):
        super().__init__()
        self.conv_in = conv(in_channels, channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            self.blocks.append(conv(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(conv(c_in, c_out, kernel_size=3, padding=1, stride=2))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = F.silu(self.conv_in(image))
        for block in self.blocks:
            features = F.silu(block(features))
        return features


class MultiPriorConditioningEmbedding(nn.Module):
    """c_g = conv_out(sum_i a_i * f_i(prior_i)), conv_out zero-initialised (the fusion layer).

    `conv` builds the convolutions (see PriorExtractor); the diffusers network and ComfyUI's native one share
    this module, so both compute c_g with the same code."""

    def __init__(self, embedding_channels: int, priors: tuple[str, ...], conditioning_channels: int,
                 block_out_channels: tuple[int, ...], conv=nn.Conv2d):
        super().__init__()
        if 2 ** (len(block_out_channels) - 1) != VAE_SCALE:
            raise ValueError(f"conditioning_embedding_out_channels needs {VAE_SCALE.bit_length()} entries "
                             f"(one per 2x step down to latent size), got {block_out_channels}")
        self.priors = tuple(priors)
        self.extractors = nn.ModuleDict({p: PriorExtractor(conditioning_channels, block_out_channels, conv)
                                         for p in priors})
        self.conv_out = conv(block_out_channels[-1], embedding_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, priors: Mapping[str, torch.Tensor], strengths: Mapping[str, float],
                dtype: torch.dtype | None = None, device: torch.device | None = None) -> torch.Tensor:
        """`dtype`, `device`: where to compute (default: the weights'; ComfyUI's ops cast weights per call, so
        its native ControlNet computes in its manual-cast dtype on the sampling device)."""
        active = _active_priors(self.priors, strengths)
        shape = _check_prior_images(priors, active, self.priors)
        dtype = dtype or self.conv_out.weight.dtype
        device = device or self.conv_out.weight.device
        if not active:
            batch, _, height, width = shape
            return torch.zeros(batch, self.conv_out.out_channels, height // VAE_SCALE, width // VAE_SCALE,
                               dtype=dtype, device=device)
        total = None
        for name in active:
            term = float(strengths[name]) * self.extractors[name](priors[name].to(device=device, dtype=dtype))
            total = term if total is None else total + term
        return self.conv_out(total)


def _active_priors(known: tuple[str, ...], strengths: Mapping[str, float]) -> list[str]:
    unknown = set(strengths) - set(known)
    if unknown:
        raise ValueError(f"unknown prior(s) {sorted(unknown)}; the priors are {list(known)}")
    return [p for p in known if float(strengths.get(p, 0.0)) != 0.0]


def _check_prior_images(priors: Mapping[str, torch.Tensor], active: list[str], known: tuple[str, ...]):
    """All given priors share one (B,3,H,W) shape with H, W multiples of 8; every active prior is given.
    Returns that shape."""
    unknown = set(priors) - set(known)
    if unknown:
        raise ValueError(f"unknown prior image(s) {sorted(unknown)}; the priors are {list(known)}")
    missing = [p for p in active if priors.get(p) is None]
    if missing:
        raise ValueError(f"prior image(s) {missing} have a non-zero strength but were not given")
    given = {name: tuple(img.shape) for name, img in priors.items() if img is not None}
    if not given:
        raise ValueError("no prior image given: the latent size cannot be known")
    shapes = set(given.values())
    if len(shapes) != 1:
        raise ValueError(f"prior images must all have the same shape, got {given}")
    shape = shapes.pop()
    if len(shape) != 4 or shape[1] != 3:
        raise ValueError(f"prior images must be (B,3,H,W) RGB in 0..1, got {shape}")
    if shape[2] % VAE_SCALE or shape[3] % VAE_SCALE:
        raise ValueError(f"prior images must be a multiple of {VAE_SCALE} pixels high and wide, got {shape[2:]}")
    return shape


class MultiPriorControlNet(nn.Module):
    """SDXL ControlNet (encoder copy + zero convs) conditioned on c_g from four priors.

    forward -> (9 down residuals for SDXL in diffusers order, mid residual), to add to the UNet's skip
    connections and mid-block output exactly as diffusers' `down_block_additional_residuals` /
    `mid_block_additional_residual` (ComfyUI: {"output": down residuals, "middle": [mid]}).
    """

    def __init__(self, config: MultiPriorControlNetConfig):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2DCrossAttn, get_down_block

        self.config = config
        c = config
        channels = c.block_out_channels
        time_dim = channels[0] * 4
        self.conv_in = nn.Conv2d(c.in_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], c.flip_sin_to_cos, c.freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], time_dim, act_fn="silu")
        self.add_embedding = TimestepEmbedding(c.projection_class_embeddings_input_dim, time_dim)
        self.controlnet_cond_embedding = MultiPriorConditioningEmbedding(
            channels[0], c.priors, c.conditioning_channels, c.conditioning_embedding_out_channels)

        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList([zero_conv(channels[0])])
        out_ch = channels[0]
        for i, block_type in enumerate(c.down_block_types):
            in_ch, out_ch = out_ch, channels[i]
            is_final = i == len(channels) - 1
            self.down_blocks.append(get_down_block(
                block_type, num_layers=c.layers_per_block,
                transformer_layers_per_block=c.transformer_layers_per_block[i],
                in_channels=in_ch, out_channels=out_ch, temb_channels=time_dim, add_downsample=not is_final,
                resnet_eps=c.norm_eps, resnet_act_fn="silu", resnet_groups=c.norm_num_groups,
                cross_attention_dim=c.cross_attention_dim, num_attention_heads=c.num_attention_heads[i],
                attention_head_dim=out_ch // c.num_attention_heads[i], downsample_padding=1,
                use_linear_projection=c.use_linear_projection, upcast_attention=c.upcast_attention))
            for _ in range(c.layers_per_block + (0 if is_final else 1)):
                self.controlnet_down_blocks.append(zero_conv(out_ch))
        self.controlnet_mid_block = zero_conv(channels[-1])
        self.mid_block = UNetMidBlock2DCrossAttn(
            transformer_layers_per_block=c.transformer_layers_per_block[-1], in_channels=channels[-1],
            temb_channels=time_dim, resnet_eps=c.norm_eps, resnet_act_fn="silu", output_scale_factor=1,
            resnet_time_scale_shift="default", cross_attention_dim=c.cross_attention_dim,
            num_attention_heads=c.num_attention_heads[-1], resnet_groups=c.norm_num_groups,
            use_linear_projection=c.use_linear_projection, upcast_attention=c.upcast_attention)

    # -- building --------------------------------------------------------------------------------------

    @classmethod
    def from_unet(cls, unet, config: MultiPriorControlNetConfig | None = None) -> "MultiPriorControlNet":
        """A ControlNet whose encoder is a copy of `unet`'s (a diffusers SDXL-layout UNet2DConditionModel);
        extractors freshly initialised, fusion conv and zero convs zero. Float32 (cast with .to())."""
        derived = MultiPriorControlNetConfig.from_unet_config(unet.config)
        if config is None:
            config = derived
        elif not config.encoder_matches(derived):
            raise ValueError("the given MultiPriorControlNetConfig does not match the UNet's layout")
        return cls.from_unet_state_dict(unet.state_dict(), config)

    @classmethod
    def from_unet_state_dict(cls, unet_state_dict: Mapping[str, torch.Tensor],
                             config: MultiPriorControlNetConfig) -> "MultiPriorControlNet":
        """Same as `from_unet` from a diffusers-layout UNet state dict (no UNet is built: saves memory).
        The weights are checked against the config on the meta device first, so a wrong UNet fails
        before an SDXL-sized ControlNet is allocated. Raises ValueError on a mismatch."""
        with torch.device("meta"):
            probe = cls(config)
        probe._check_unet_encoder(unet_state_dict)
        model = cls(config)
        model.load_encoder_from_unet(unet_state_dict)
        return model

    def load_encoder_from_unet(self, unet_state_dict: Mapping[str, torch.Tensor]) -> None:
        """Copy conv_in, time_embedding, add_embedding, down_blocks and mid_block from a diffusers UNet
        state dict, key for key; every encoder key must be there with the same shape (ValueError if not)."""
        wanted = self._check_unet_encoder(unet_state_dict)
        own = self.state_dict()
        with torch.no_grad():
            for k in wanted:
                own[k].copy_(unet_state_dict[k])

    def _check_unet_encoder(self, unet_state_dict: Mapping[str, torch.Tensor]) -> list[str]:
        own = self.state_dict()
        wanted = [k for k in own if k.split(".")[0] in UNET_COPIED_MODULES]
        missing = [k for k in wanted if k not in unet_state_dict]
        if missing:
            raise ValueError(f"the UNet lacks {len(missing)} encoder weights, e.g. {missing[:3]}")
        wrong = [k for k in wanted if tuple(unet_state_dict[k].shape) != tuple(own[k].shape)]
        if wrong:
            k = wrong[0]
            raise ValueError(f"{len(wrong)} UNet weights have other shapes than this ControlNet's, e.g. {k}: "
                             f"{tuple(unet_state_dict[k].shape)} vs {tuple(own[k].shape)}")
        return wanted

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the diffusers blocks' activations in the backward pass (training on big images)."""
        enable_checkpointing(self, enabled)

    # -- running ---------------------------------------------------------------------------------------

    @staticmethod
    def is_active(strengths: Mapping[str, float], conditioning_scale: float = 1.0) -> bool:
        """Whether the ControlNet contributes anything; when False, callers must not add its residuals."""
        return float(conditioning_scale) != 0.0 and any(float(v) != 0.0 for v in strengths.values())

    def embed_priors(self, priors: Mapping[str, torch.Tensor | None], strengths: Mapping[str, float]) -> torch.Tensor:
        """c_g at latent resolution (B, block_out_channels[0], H/8, W/8) from priors (B,3,H,W) in 0..1.

        `priors` maps names in PRIORS to images (None or absent for unused ones); `strengths` maps names
        to a_i (absent = 0). Exactly zero, without running the extractors, when every strength is 0."""
        return self.controlnet_cond_embedding(priors, strengths)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                encoder_hidden_states: torch.Tensor, y: torch.Tensor, cond_embedding: torch.Tensor,
                conditioning_scale: float = 1.0) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Residuals for the UNet.

        sample (B,4,h,w) noisy latent (scaled model input); timestep (B,) or scalar in 0..999;
        encoder_hidden_states (B,77,cross_attention_dim); y (B, projection_class_embeddings_input_dim)
        SDXL's added vector; cond_embedding (B, C0, h, w) from `embed_priors`.
        Returns ([down residuals, diffusers order], mid residual), all multiplied by conditioning_scale.
        """
        if float(conditioning_scale) == 0.0:
            return self._zero_residuals(sample)
        dtype = self.conv_in.weight.dtype
        sample = sample.to(dtype)
        emb = self._embedding(timestep, y, sample)
        context = encoder_hidden_states.to(dtype)
        hidden = self.conv_in(sample) + cond_embedding.to(dtype)
        skips = [hidden]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, res = block(hidden_states=hidden, temb=emb, encoder_hidden_states=context)
            else:
                hidden, res = block(hidden_states=hidden, temb=emb)
            skips.extend(res)
        hidden = self.mid_block(hidden, emb, encoder_hidden_states=context)
        down = [conv(skip) * conditioning_scale for conv, skip in zip(self.controlnet_down_blocks, skips)]
        return down, self.controlnet_mid_block(hidden) * conditioning_scale

    def _embedding(self, timestep, y: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        batch = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(batch)
        t_emb = self.time_proj(t).to(sample.dtype)  # fp32 sinusoids, cast like diffusers does
        if y.shape != (batch, self.config.projection_class_embeddings_input_dim):
            width = self.config.projection_class_embeddings_input_dim
            raise ValueError(f"y must be (B, {width}), got {tuple(y.shape)}")
        return self.time_embedding(t_emb) + self.add_embedding(y.to(sample.dtype))

    def _zero_residuals(self, sample: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Exact zeros shaped like the residuals, without running the encoder."""
        batch, _, h, w = sample.shape
        c = self.config
        kw = dict(dtype=self.conv_in.weight.dtype, device=sample.device)
        down = [torch.zeros(batch, c.block_out_channels[0], h, w, **kw)]
        for i, ch in enumerate(c.block_out_channels):
            down += [torch.zeros(batch, ch, h, w, **kw) for _ in range(c.layers_per_block)]
            if i < len(c.block_out_channels) - 1:
                h, w = -(-h // 2), -(-w // 2)  # a stride-2, padding-1, 3x3 conv rounds up
                down.append(torch.zeros(batch, ch, h, w, **kw))
        return down, torch.zeros(batch, c.block_out_channels[-1], h, w, **kw)

    @staticmethod
    def sdxl_added_vector(text_embeds: torch.Tensor, time_ids: torch.Tensor, dim: int = ADD_TIME_DIM) -> torch.Tensor:
        """SDXL's added vector y: cat(pooled text (B,P), sinusoidal(time_ids (B,6)) each to `dim`) -> (B, P+6*dim).

        Same as diffusers' add_time_proj (Timesteps(256, flip_sin_to_cos=True, shift 0)) and ComfyUI's
        SDXL.encode_adm (Timestep(256): cos half first)."""
        from diffusers.models.embeddings import get_timestep_embedding

        if time_ids.ndim != 2 or time_ids.shape[1] != NUM_TIME_IDS or time_ids.shape[0] != text_embeds.shape[0]:
            raise ValueError(f"time_ids must be (B, {NUM_TIME_IDS}) matching text_embeds' batch, "
                             f"got {tuple(time_ids.shape)}")
        embedded = get_timestep_embedding(time_ids.flatten(), dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        embedded = embedded.reshape(text_embeds.shape[0], -1)
        return torch.cat([text_embeds, embedded.to(text_embeds.dtype)], dim=-1)


UNET_COPIED_MODULES = ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block")
