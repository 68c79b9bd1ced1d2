"""Real-size stage-0 and prior fixtures: random weights at the public models' real configs, written in
their public folder layouts, for tests that run the pack's own loaders (and the bundled workflows) at
real sizes. Nothing is downloaded.

- LLaVA 1.5 7B (`llava-hf/llava-1.5-7b-hf`): the real widths, vocabulary and wiring, but `layers`
  decoder layers (default 1) and the fewest vision layers feature layer -2 allows (2). The folder,
  key names and sharding are testing/tiny/llava.py's; the tokenizer is its hand-made offline Llama-style
  BPE, padded so that <image> and <pad> get the real ids 32000 and 32001 (the real tokenizer is
  SentencePiece's 32000 pieces; ours has the same size and special ids, not the same pieces).
  `llava_parameter_count()` builds the full 32 + 24 layer network on the meta device.
- Depth Anything V2 Small (`depth-anything/Depth-Anything-V2-Small-hf`): the whole network at its real
  config, float32 like the public `model.safetensors` (99.2 MB), and its real preprocessor config.
- Marigold normals v1.1 (`prs-eth/marigold-normals-v1-1`): SD 2's UNet with 8 input channels, SD's VAE,
  OpenCLIP-H's text encoder (transformers CLIPTextModel), CLIP's tokenizer, DDIM; float16 weights under
  the plain (non-variant) file names, which are what the pack loads.
- DWPose: testing/tiny/dwpose.py's ONNX graphs already take and give the real names and shapes
  (yolox_l: "images" 1x3x640x640 -> "output" 1x8400x85; dw-ll_ucoco_384: "input" 1x3x384x288 -> "simcc_x"
  1x133x576, "simcc_y" 1x133x768), only their compute is tiny; use `write_tiny_dwpose`.
"""

from __future__ import annotations

import gc
import os
import shutil

# -- LLaVA 1.5 7B: llava-hf/llava-1.5-7b-hf config.json (https://huggingface.co/llava-hf/llava-1.5-7b-hf,
# transformers 4.39 save): text_config vicuna-7b-v1.5 = Llama 7B (hidden 4096, intermediate 11008, 32 layers,
# 32 heads, no GQA, max_position_embeddings 4096, rms_norm_eps 1e-5, rope theta 10000: LlamaConfig defaults
# the file leaves implicit), vocab_size 32064; vision_config CLIP ViT-L/14-336 (hidden 1024, intermediate
# 4096, 24 layers, 16 heads, image 336, patch 14, projection_dim 768); image_token_index 32000, pad 32001,
# projector gelu (1024 -> 4096 -> 4096), vision_feature_layer -2, strategy "default".
LLAVA_BASE_VOCAB = 32000
LLAVA_IMAGE_SIZE, LLAVA_PATCH_SIZE = 336, 14
LLAVA_FULL_LAYERS, LLAVA_FULL_VISION_LAYERS = 32, 24
LLAVA_MIN_VISION_LAYERS = 2  # feature layer -2 is the output of the second-to-last layer
LLAVA_SHARDS = 3  # model-0000{1,2,3}-of-00003.safetensors, as llava-hf ships it
LLAVA_7B_PARAMETERS = 7_063_427_072  # "7.06B params" on the model page

# -- Depth Anything V2 Small: depth-anything/Depth-Anything-V2-Small-hf config.json
# (https://huggingface.co/depth-anything/Depth-Anything-V2-Small-hf/blob/main/config.json): backbone DINOv2
# hidden 384, 6 heads, patch 14, image 518, out_indices [3, 6, 9, 12] (12 layers and mlp_ratio 4: Dinov2Config
# defaults the file leaves implicit); reassemble_hidden_size 384, reassemble_factors [4, 2, 1, 0.5],
# neck_hidden_sizes [48, 96, 192, 384], fusion_hidden_size 64, head_hidden_size 32, head_in_index -1,
# relative depth. preprocessor_config.json: DPTImageProcessor 518 x 518, keep_aspect_ratio, ensure_multiple_of
# 14, resample 3 (bicubic), ImageNet mean/std, no padding.
DEPTH_WORKING_SIZE = 518
DEPTH_SMALL_FILE_BYTES = 99.2e6  # model.safetensors on the "Files" page: 24.8 M float32 parameters

# -- Marigold normals v1.1: model_index.json defaults as in the v1.1 releases (prs-eth/marigold-depth-v1-1:
# default_denoising_steps 4, default_processing_resolution 768; the model cards: "effective resolution of
# roughly 768 pixels"; the normals pipelines add prediction_type "normals" and use_full_z_range true).
MARIGOLD_STEPS, MARIGOLD_PROCESSING_RESOLUTION = 4, 768
# unet/config.json of prs-eth's Marigold releases (https://huggingface.co/prs-eth/marigold-depth-v1-0,
# unet/config.json): SD 2's UNet (block_out 320/640/1280/1280, attention_head_dim 5/10/20/20, cross 1024,
# linear projection, 2 layers per block) with in_channels 8 and sample_size 96.
MARIGOLD_UNET_IN_CHANNELS, MARIGOLD_UNET_SAMPLE_SIZE = 8, 96
# SD 2's VAE and text encoder (also Marigold's VAE): models/single_file.py's SD21_VAE_CONFIG and
# SD21_TEXT_ENCODER_CONFIG, the single-file loaders' defaults.
COMFY_CLIP_TOKENIZER = os.path.join("comfy", "sd1_tokenizer")  # CLIP's BPE (vocab.json, merges.txt)


# -- LLaVA ------------------------------------------------------------------------------------------------

def write_realsize_llava(model_dir: str, *, layers: int = 1, seed: int = 0) -> str:
    """Write LLaVA 1.5 7B's folder with `layers` decoder layers and 2 vision layers (float16 random
    weights, about 1 GB for one layer) into `model_dir`; return it. Layout, key names and tokenizer as
    testing/tiny/llava.py writes them (the tokenizer is the hand-made offline one, see the module doc)."""
    import torch

    from ..tiny.llava import llava15_model, llava_tokenizer, write_llava_folder

    tokenizer = llava_tokenizer(LLAVA_BASE_VOCAB)
    vision, text = llava15_7b_configs(layers, LLAVA_MIN_VISION_LAYERS)
    model = llava15_model(tokenizer, vision, text, seed=seed, dtype=torch.float16)
    write_llava_folder(model_dir, model, tokenizer, shards=LLAVA_SHARDS)
    del model
    gc.collect()
    return model_dir


def llava15_7b_configs(layers: int = LLAVA_FULL_LAYERS, vision_layers: int = LLAVA_FULL_VISION_LAYERS):
    """(CLIPVisionConfig, LlamaConfig) of LLaVA 1.5 7B with the given numbers of layers."""
    from transformers import CLIPVisionConfig, LlamaConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=vision_layers,
                              num_attention_heads=16, image_size=LLAVA_IMAGE_SIZE, patch_size=LLAVA_PATCH_SIZE,
                              projection_dim=768)
    text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5,
                       tie_word_embeddings=False)
    return vision, text


def llava_parameter_count() -> int:
    """Parameters of the FULL LLaVA 1.5 7B (32 decoder and 24 vision layers), built on the meta device
    (no memory): 7,063,427,072 for the real config."""
    import torch

    from ..tiny.llava import llava15_model, llava_tokenizer

    with torch.device("meta"):
        model = llava15_model(llava_tokenizer(LLAVA_BASE_VOCAB), *llava15_7b_configs(), seed=0)
    return sum(p.numel() for p in model.parameters())


# -- Depth Anything V2 Small ------------------------------------------------------------------------------

def depth_anything_v2_small_config():
    """DepthAnythingConfig of depth-anything/Depth-Anything-V2-Small-hf (values: see the module's constants)."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                            image_size=DEPTH_WORKING_SIZE, patch_size=14, out_indices=[3, 6, 9, 12],
                            reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=384,
                               reassemble_factors=[4, 2, 1, 0.5], neck_hidden_sizes=[48, 96, 192, 384],
                               fusion_hidden_size=64, head_hidden_size=32, head_in_index=-1,
                               depth_estimation_type="relative")


def write_realsize_depth_anything_small(model_dir: str, *, seed: int = 0) -> str:
    """Write Depth Anything V2 Small (real config, float32 random weights, ~99 MB) with its real image
    processor into `model_dir`; return it."""
    from ..tiny.priors import write_depth_anything

    return write_depth_anything(model_dir, depth_anything_v2_small_config(), working_size=DEPTH_WORKING_SIZE,
                                seed=seed)


# -- Marigold normals v1.1 ------------------------------------------------------------------------------

def write_realsize_marigold_normals(model_dir: str, *, comfyui_dir: str | None = None, seed: int = 0,
                                    processing_resolution: int = MARIGOLD_PROCESSING_RESOLUTION) -> str:
    """Write Marigold normals v1.1's folder (real configs, float16 random weights, ~2.6 GB) into
    `model_dir`; return it. One network at a time, so memory stays near the largest (the UNet, 1.7 GB).

    comfyui_dir: a ComfyUI whose `comfy/sd1_tokenizer/` holds CLIP's real BPE files (copied into
    `tokenizer/`); None: the tiny offline CLIP tokenizer (testing/tiny/sd21_components.py), whose ids all
    fall inside the real 49408-row embedding. processing_resolution: model_index.json's default (the real
    768; CPU tests may lower it, since the pack's loader runs the pipeline at that default)."""
    import torch

    from ..tiny import seeded_init
    from ..tiny.priors import write_marigold_normals_index
    from ..tiny.sd21_components import write_text_encoder

    os.makedirs(model_dir, exist_ok=True)
    _write_clip_tokenizer(os.path.join(model_dir, "tokenizer"), comfyui_dir)
    for index, (name, build) in enumerate((("vae", _sd2_vae), ("text_encoder", _sd2_text_encoder),
                                           ("unet", _marigold_unet))):
        with seeded_init(seed + index, torch.float16):
            module = build()
        if name == "text_encoder":
            write_text_encoder(module, os.path.join(model_dir, name))
        else:
            module.save_pretrained(os.path.join(model_dir, name), safe_serialization=True)
        del module
        gc.collect()
    return write_marigold_normals_index(model_dir, steps=MARIGOLD_STEPS, processing_resolution=processing_resolution)


def _write_clip_tokenizer(directory: str, comfyui_dir: str | None) -> None:
    from ..tiny.sd21_components import write_tiny_clip_tokenizer, write_tokenizer_config

    if comfyui_dir is None:
        write_tiny_clip_tokenizer(directory)
        return
    os.makedirs(directory, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(comfyui_dir, COMFY_CLIP_TOKENIZER, name), os.path.join(directory, name))
    write_tokenizer_config(directory)


def _sd2_vae():
    from diffusers import AutoencoderKL

    from ...models.single_file import SD21_VAE_CONFIG

    return AutoencoderKL(**SD21_VAE_CONFIG).eval()


def _sd2_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    from ...models.single_file import SD21_TEXT_ENCODER_CONFIG

    return CLIPTextModel(CLIPTextConfig(**SD21_TEXT_ENCODER_CONFIG)).eval()


def _marigold_unet():
    from diffusers import UNet2DConditionModel

    from ...models.joint_unet import JointUNetConfig

    config = JointUNetConfig.sd21_base().to_diffusers_unet_config(in_channels=MARIGOLD_UNET_IN_CHANNELS)
    config["sample_size"] = MARIGOLD_UNET_SAMPLE_SIZE
    return UNet2DConditionModel(**config).eval()
