"""The colour adapter inside diffusers' attention: processors that add the adapter's attention over the
image (ip) tokens to an SDXL UNet's cross-attentions, for the diffusers stage-2 sampler and the colour
adapter's training (ComfyUI gets the same through an attention patch, nodes/stage2_native.py)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch
import torch.nn.functional as F

from .stage2_errors import Stage2Error

if TYPE_CHECKING:
    from ..models.colour_adapter import ColourAdapter


@dataclass
class AdapterState:
    """What the installed processors read at each UNet call: ip tokens for the whole UNet batch and the
    weight (0 = off: the UNet's own processors run)."""

    tokens: torch.Tensor | None = None
    weight: float = 0.0


class ColourAdapterProcessor:
    """attn2 processor: the UNet's attention plus weight * the adapter's attention over ip tokens, added
    before to_out (as IP-Adapter's processor). Off (weight 0 or no tokens): calls the original processor."""

    def __init__(self, base, adapter: "ColourAdapter", layer_index: int, state: AdapterState):
        self.base, self.adapter, self.layer_index, self.state = base, adapter, layer_index, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if self.state.weight == 0 or self.state.tokens is None:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None \
                or attn.norm_q is not None or attention_mask is not None:
            raise Stage2Error("the colour adapter supports SDXL's plain cross-attention layers only")
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads

        def heads(x):
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        query = heads(query)
        out = F.scaled_dot_product_attention(query, heads(key), heads(value), dropout_p=0.0, is_causal=False)
        extra = self.adapter.ip_attention(self.layer_index, query, self.state.tokens, attn.heads)
        out = out + self.state.weight * extra
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def colour_adapter_installed(unet, adapter: "ColourAdapter") -> Iterator[AdapterState]:
    """Install the adapter's processors on `unet`'s cross-attentions for the duration of the block (the
    UNet's own processors come back afterwards, even on error). Yields the AdapterState to set."""
    original = dict(unet.attn_processors)
    missing = [name for name in adapter.layer_names() if name not in original]
    if missing:
        raise Stage2Error(f"the colour adapter does not fit this UNet: it has no layer {missing[0]!r}")
    state = AdapterState()
    processors = dict(original)
    for index, name in enumerate(adapter.layer_names()):
        processors[name] = ColourAdapterProcessor(original[name], adapter, index, state)
    unet.set_attn_processor(processors)
    try:
        yield state
    finally:
        unet.set_attn_processor(original)
