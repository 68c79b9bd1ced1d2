"""Training phase 4: DiffBody's colour adapter, SDXL and the phase-3 ControlNet frozen (paper eq. 4).

    python -m comfyui_diffbody.training.train_colour_adapter --data_root DATA \
        --pretrained_sdxl stable-diffusion-xl-base-1.0 --swinir general_swinir_v1.ckpt \
        --controlnet runs/stage2_controlnet/diffbody_stage2_controlnet.safetensors \
        --init_adapter ip-adapter-plus_sdxl_vit-h.safetensors \
        --clip_vision CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors --output_dir runs/colour_adapter
    accelerate launch --multi_gpu --num_processes 8 -m comfyui_diffbody.training.train_colour_adapter ...

The adapter starts from IP-Adapter Plus XL (`--init_adapter`, the public file or a DiffBody colour adapter
to continue from) and all of it is trained: the resampler (`image_proj`) and every layer's
`to_k_ip` / `to_v_ip`. Its input is the CLIP ViT-H image embedding (penultimate hidden states) of the
reference image; SDXL runs with the frozen phase-3 ControlNet's residuals (c_g from I_ir, pose, depth,
normal, made as in phase 3: training/stage2_common.py) and the adapter's tokens in every cross-attention,
exactly as the stage-2 sampler and the ComfyUI patch apply them.

The adapter's reference image (`--colour_reference`): the paper trains it on I_res, stage 1's restoration
(section 3.3, after eq. 4), which is also what inference feeds it; an adapter that only ever saw perfect
references would learn to copy colours, and copy the colour errors of an imperfect I_res at inference.
- `ires` (the default whenever every item has its file): the stored `DATA_ROOT/ires/<id>.png`, written by
  `python -m comfyui_diffbody.training.prepare_ires` with the trained stage 1 (phases 1 and 2);
- `hq`: the clean high-quality photo itself (what this phase used before the I_res step existed);
- `ir`: the step's I_ir (the input the public-weights mode gives IP-Adapter).
Without the I_res files the default is an error that names the step, or asks for `hq`/`ir` explicitly.

Dropout for classifier-free guidance, as IP-Adapter was trained: with probability `--condition_dropout`
each (0.05), the image only, the caption only, or both are dropped; a dropped image is an all-zero CLIP
input, a dropped caption the empty prompt: the samplers' unconditional half.

Defaults follow the paper (section 4.2): Adam, lr 1e-4, 200k steps, batch 64 = 8 per GPU on 8 GPUs.
Writes `output_dir/diffbody_colour_adapter.safetensors` (and one in each checkpoint folder) in IP-Adapter
Plus XL's layout, which the "DiffBody Colour Adapter Loader" node reads from ComfyUI/models/ipadapter.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Iterator

import torch
from torch import nn

from ..models.colour_adapter import ColourAdapter
from ..models.stage2_weights import COLOUR_ADAPTER_FILENAME
from . import stage2_common as common
from .loop import add_training_arguments, config_from_args
from .shared import Cleaner, fix_batch_randomness, phase_main, run_phase

PAPER_LEARNING_RATE = 1e-4  # section 4.2
PAPER_BATCH_PER_GPU = 8  # 64 on the paper's 8 GPUs
PAPER_STEPS = 200_000
DEFAULT_CONDITION_DROPOUT = 0.05  # IP-Adapter's training script: image, text and both, 0.05 each
REFERENCES = ("ires", "hq", "ir")
BASE_FIELDS = ("image", "pose", "depth", "normal", "caption")


class ColourAdapterOnUNet(nn.Module):
    """The adapter installed in a frozen SDXL UNet's cross-attentions for training: forward projects the CLIP
    features to ip tokens and runs the UNet with them, so DistributedDataParallel sees every trained parameter
    used inside the call it wraps. The UNet is held outside the module tree (not trained, not saved); the
    weights live in `.adapter`.

    The processors stay installed for the whole run (not per call): with gradient checkpointing the UNet's
    blocks run again in the backward pass and must meet the same processors and tokens."""

    def __init__(self, adapter: ColourAdapter, unet):
        from ..pipelines.colour_attention import AdapterState, ColourAdapterProcessor

        super().__init__()
        self.adapter = adapter
        self._unet = (unet,)
        self.state = AdapterState()
        self._original = dict(unet.attn_processors)
        missing = [name for name in adapter.layer_names() if name not in self._original]
        if missing:
            raise SystemExit(f"the colour adapter does not fit this SDXL UNet: it has no layer {missing[0]!r}")
        self._patched = dict(self._original)
        for index, name in enumerate(adapter.layer_names()):
            self._patched[name] = ColourAdapterProcessor(self._original[name], adapter, index, self.state)
        unet.set_attn_processor(dict(self._patched))

    @property
    def unet(self):
        return self._unet[0]

    def forward(self, clip_features: torch.Tensor, inputs: common.Stage2Inputs, residuals) -> torch.Tensor:
        self.state.tokens, self.state.weight = self.adapter.project(clip_features), 1.0
        return common.unet_prediction(self.unet, inputs, residuals)

    @contextlib.contextmanager
    def unet_unpatched(self) -> Iterator[None]:
        """The UNet with its own processors (for sampling with pipelines/stage2.py, which installs its own)."""
        self.unet.set_attn_processor(dict(self._original))
        try:
            yield
        finally:
            self.unet.set_attn_processor(dict(self._patched))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m comfyui_diffbody.training.train_colour_adapter",
                                     description="DiffBody training phase 4: the colour adapter (eq. 4).")
    common.add_stage2_arguments(parser)
    parser.add_argument("--controlnet", required=True,
                        help="the phase-3 multi-prior ControlNet (diffbody_stage2_controlnet.safetensors), frozen")
    parser.add_argument("--init_adapter", required=True,
                        help="IP-Adapter Plus XL (ip-adapter-plus_sdxl_vit-h.safetensors: the paper's initialisation), "
                             "or a DiffBody colour adapter to continue from")
    parser.add_argument("--clip_vision", required=True,
                        help="OpenCLIP ViT-H-14 image encoder: a transformers folder (h94/IP-Adapter "
                             "models/image_encoder) or ComfyUI's CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
    parser.add_argument("--colour_reference", choices=REFERENCES, default=None,
                        help="the adapter's reference image: ires (the paper's: stage 1's I_res stored by "
                             "training/prepare_ires.py; the default, which needs every item's file), hq (the clean "
                             "photo) or ir (the step's I_ir)")
    parser.add_argument("--condition_dropout", type=float, default=DEFAULT_CONDITION_DROPOUT,
                        help="probability each of dropping the image only, the caption only, and both "
                             "(replaces --caption_dropout in this phase)")
    add_training_arguments(parser, learning_rate=PAPER_LEARNING_RATE, train_batch_size=PAPER_BATCH_PER_GPU,
                           max_steps=PAPER_STEPS)
    return parser


def save_adapter(model: ColourAdapterOnUNet, folder: str) -> None:
    from ..models.stage2_weights import save_colour_adapter

    save_colour_adapter(model.adapter, os.path.join(folder, COLOUR_ADAPTER_FILENAME))


def dropout_masks(count: int, generators: common.Generators, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop image, drop caption) (B,) bool masks: one draw r per item; r < rate drops the image, rate <= r <
    2 rate the caption, 2 rate <= r < 3 rate both."""
    draws = common.rand(count, generators)
    both = (draws >= 2 * rate) & (draws < 3 * rate)
    return (draws < rate) | both, ((draws >= rate) & (draws < 2 * rate)) | both


@torch.no_grad()
def clip_features(image_encoder, images: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """Penultimate CLIP hidden states of `images` (B,3,H,W) in 0..1, an all-zero CLIP input where `dropped`."""
    from ..pipelines.clip_image import clip_image_features, clip_pixels

    param = next(image_encoder.parameters())
    pixels = clip_pixels(images.float(), image_encoder.config.image_size)
    pixels = torch.where(dropped.to(pixels.device).view(-1, 1, 1, 1), torch.zeros_like(pixels), pixels)
    return clip_image_features(image_encoder, pixels.to(param.device, param.dtype))


def resolve_reference(choice: str | None, data_root: str, dataset) -> str:
    """The reference to train on: `choice`, or "ires" when every item has its I_res file. Missing I_res files
    are an error (never a silent switch to another image)."""
    if choice not in (None, "ires"):
        return choice
    missing = dataset.missing("ires")
    if missing:
        raise SystemExit(
            f"{len(missing)} of {len(dataset)} item(s) of {data_root} have no I_res file (ires/<id>.png; first: "
            f"{missing[0]!r}). The paper trains the colour adapter on I_res: run `python -m "
            f"comfyui_diffbody.training.prepare_ires {data_root} --pretrained_sd21 ... --unet ... --controlnet ... "
            f"--swinir ...` first, or pick --colour_reference hq or ir explicitly.")
    return "ires"


def reference_image(name: str, batch: dict, image_ir: torch.Tensor) -> torch.Tensor:
    """The adapter's reference for `name` (REFERENCES): the batch's stored I_res, its photo, or I_ir."""
    return {"ires": lambda: batch["ires"], "hq": lambda: batch["image"], "ir": lambda: image_ir}[name]()


def load_frozen_controlnet(path: str, unet_config):
    from ..models.multiprior_controlnet import MultiPriorControlNetConfig
    from ..models.stage2_weights import load_multiprior

    controlnet = load_multiprior(path, dtype=torch.float32)
    if not controlnet.config.encoder_matches(MultiPriorControlNetConfig.from_unet_config(unet_config)):
        raise SystemExit(f"{path} was made for an SDXL UNet of other sizes than the one given")
    return controlnet


def train(args: argparse.Namespace, accelerator=None) -> list[float]:
    """Run phase 4 with parsed arguments; returns this process's per-step losses."""
    from ..models.colour_adapter import load_colour_adapter
    from ..models.sdxl_components import load_clip_vision
    from ..pipelines.stage2 import Stage2Pipeline
    from .dataset import ManifestDataset

    config = config_from_args(args)
    strengths = common.prior_strengths(args)
    dataset = ManifestDataset(args.data_root, fields=BASE_FIELDS)
    args.colour_reference = resolve_reference(args.colour_reference, args.data_root, dataset)
    if args.colour_reference == "ires":
        dataset = ManifestDataset(args.data_root, fields=(*BASE_FIELDS, "ires"))
    sdxl = common.load_frozen_sdxl(args.pretrained_sdxl, args.sdxl_unet)
    controlnet = load_frozen_controlnet(args.controlnet, sdxl.unet.config)
    image_encoder = load_clip_vision(args.clip_vision)
    adapter = load_colour_adapter(args.init_adapter, dict(sdxl.unet.config), dtype=torch.float32)
    if adapter.config.embedding_dim != image_encoder.config.hidden_size:
        raise SystemExit(f"{args.init_adapter} takes CLIP features of width {adapter.config.embedding_dim}, "
                         f"{args.clip_vision} gives {image_encoder.config.hidden_size}")
    model = ColourAdapterOnUNet(adapter.train().requires_grad_(True), sdxl.unet)
    cleaner = Cleaner(args.swinir)
    schedule = common.training_schedule()
    previews = common.Previews(dataset, args, cleaner)

    def compute_loss(batch):
        if args.fixed_noise:
            fix_batch_randomness(batch, args.seed)
        drop_image, drop_caption = dropout_masks(batch["image"].shape[0], batch["generator"], args.condition_dropout)
        inputs = common.prepare_inputs(batch, sdxl, schedule, cleaner, 0.0, args.degradation_scale,
                                       drop_captions=drop_caption)
        with torch.no_grad():
            residuals = controlnet(inputs.noisy, inputs.timesteps, inputs.context, inputs.added_vector,
                                   controlnet.embed_priors(inputs.priors, strengths))
            reference = reference_image(args.colour_reference, batch, inputs.priors["image"])
            features = clip_features(image_encoder, reference, drop_image)
        prediction = batch["model"](features, inputs, residuals)
        return common.noise_loss(prediction, inputs.noise)

    def validate(wrapper: ColourAdapterOnUNet, step: int, folder: str) -> None:
        pipeline = Stage2Pipeline(sdxl.unet, sdxl.vae.vae, sdxl.text_encoders, controlnet=controlnet,
                                  adapter=wrapper.adapter.eval(), image_encoder=image_encoder)
        with wrapper.unet_unpatched():
            common.sample_previews(pipeline, previews, strengths, folder, step, args,
                                   adapter_reference=lambda p: reference_image(
                                       args.colour_reference, {k: v[None] for k, v in p.item.items()
                                                               if isinstance(v, torch.Tensor)}, p.image_ir[None]))

    return run_phase(config, args, trainable=model, dataset=dataset, compute_loss=compute_loss,
                     frozen=[*sdxl.modules, controlnet, image_encoder], frozen_fp32=[sdxl.vae_module], cleaner=cleaner,
                     save_weights=save_adapter, validate=validate if previews else None, accelerator=accelerator)


def main(argv: list[str] | None = None) -> int:
    return phase_main(build_parser, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
