"""Public-weights mode: ControlNet-Union SDXL standing in for the multi-prior ControlNet in the diffusers
stage-2 sampler."""

from __future__ import annotations

from typing import Mapping

import torch

from ..models.multiprior_controlnet import MultiPriorControlNet
from .stage2_errors import Stage2Error

Residuals = tuple[list[torch.Tensor], torch.Tensor]


class UnionPriorControl:
    """ControlNet-Union SDXL (a diffusers ControlNetUnionModel) standing in for the multi-prior ControlNet:
    each prior with a_i != 0 is one single-type pass with its union control type (models.union_controlnet:
    I_ir as tile, I_pose as openpose, depth, normal), its residuals scaled by a_i * control scale, and the
    passes' residuals summed. That is what the ComfyUI node chains (nodes/stage2.py union_priors_control).

    Passes run one image at a time: the union's condition transformer is a sequence-first
    nn.MultiheadAttention given batch-first tensors (xinsir's code, kept by diffusers), so a batched call
    attends across the batch (the CFG halves, other images). Image by image it matches ComfyUI's
    computation, and an image's result does not depend on the rest of its batch."""

    is_active = staticmethod(MultiPriorControlNet.is_active)

    def __init__(self, union_model):
        self.model = union_model

    @property
    def num_control_type(self) -> int:
        return int(self.model.config.num_control_type)

    def prepare_priors(self, priors: Mapping[str, torch.Tensor | None], strengths: Mapping[str, float],
                       repeats: int = 1) -> dict[str, torch.Tensor]:
        """The active priors' images (a_i != 0), each (B,3,H,W) 0..1 repeated `repeats` times along the
        batch (CFG), in the union's dtype and device."""
        from ..models.union_controlnet import UNION_TYPES, check_union_types

        unknown = sorted(set(strengths) - set(UNION_TYPES))
        if unknown:
            raise Stage2Error(f"unknown priors {unknown}; ControlNet-Union takes {', '.join(UNION_TYPES)}")
        active = [name for name in UNION_TYPES if float(strengths.get(name, 0.0)) != 0.0]
        absent = [name for name in active if priors.get(name) is None]
        if absent:
            raise Stage2Error(f"prior strengths are set for {absent} but those priors were not given")
        check_union_types(self.num_control_type, active)
        param = next(self.model.parameters())
        return {name: torch.cat([priors[name]] * repeats).to(param.device, param.dtype) for name in active}

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, timestep, context: torch.Tensor, pooled: torch.Tensor,
                 time_ids: torch.Tensor, images: Mapping[str, torch.Tensor], strengths: Mapping[str, float],
                 conditioning_scale: float = 1.0) -> Residuals:
        """Summed residuals for the UNet batch `sample` (N,4,h,w); images from `prepare_priors` (N,3,8h,8w)."""
        from ..models.union_controlnet import UNION_TYPES

        param = next(self.model.parameters())
        per_image = []
        for i in range(sample.shape[0]):
            one = dict(sample=sample[i:i + 1].to(param.device, param.dtype),
                       encoder_hidden_states=context[i:i + 1].to(param.device, param.dtype),
                       added_cond_kwargs={"text_embeds": pooled[i:i + 1].to(param.device, param.dtype),
                                          "time_ids": time_ids[i:i + 1].to(param.device, param.dtype)})
            total: Residuals | None = None
            for name, image in images.items():
                control_type = torch.zeros(1, self.num_control_type, device=param.device, dtype=param.dtype)
                control_type[0, UNION_TYPES[name]] = 1.0
                down, mid = self.model(timestep=timestep, controlnet_cond=[image[i:i + 1]], control_type=control_type,
                                       control_type_idx=[UNION_TYPES[name]],
                                       conditioning_scale=float(strengths[name]) * float(conditioning_scale),
                                       return_dict=False, **one)
                total = (list(down), mid) if total is None else \
                    ([a + b for a, b in zip(total[0], down)], total[1] + mid)
            per_image.append(total)
        down = [torch.cat([residuals[0][k] for residuals in per_image]) for k in range(len(per_image[0][0]))]
        return down, torch.cat([residuals[1] for residuals in per_image])
