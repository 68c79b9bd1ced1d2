"""Write the bundled workflows in both formats from one description, so they cannot drift apart.

    python scripts/build_workflows.py                  # starts a ComfyUI with the pack to read /object_info
    python scripts/build_workflows.py --object-info F  # or reads a saved /object_info answer
    python scripts/build_workflows.py --check          # exit 1 if a committed file differs

Each workflow below is a list of nodes (id, class, title, position, widget values by input name, links
by input name) and groups. From that and the server's /object_info (which gives every node's input
order, which inputs are widgets, and its outputs) this writes:
- `workflows/<name>.json`: the UI format the ComfyUI frontend 1.32 saves and loads by drag-and-drop
  (LiteGraph: nodes with id/type/pos/size/inputs/outputs/widgets_values/properties, links, groups).
  widgets_values follow the frontend's widget order: the required, then the optional widget inputs in
  /object_info order; an INT with `control_after_generate` (or named seed/noise_seed) is followed by its
  control value ("fixed"), an image-upload combo by its upload button's value ("image").
- `workflows/api/<name>_api.json`: the API format of `POST /prompt` (node id as a string -> class_type,
  inputs, _meta.title), the same ids, values and links. Notes exist only in the UI format.
Each node's properties carry its pack, as ComfyUI-Manager's frontend saves them: "cnr_id" and "ver"
(comfy-core and COMFYUI_VERSION for stock nodes; pyproject's [project] name and version for ours).
Unset widgets get the input's default from /object_info. Model-file inputs get a "models" property
(name, url, folder) for public .safetensors files, which the frontend's missing-models dialog offers to
download (it refuses other suffixes; the notes and the nodes' own messages cover every file).
tests/test_workflows.py converts every UI file back with the live server's /object_info and checks it
against its API twin.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from comfyui_diffbody.pipelines.presets import (FAST, KSAMPLER_NAMES, MODE_DEFAULTS, PUBLIC_DEPTH_MODEL,
                                               PUBLIC_NORMAL_SOURCE, with_speed)

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
FRONTEND_VERSION = "1.32.9"  # comfyui-frontend-package shipped with ComfyUI 0.3.75
# Node pack of each node, as ComfyUI-Manager's frontend writes it into a saved workflow ("cnr_id", "ver"; the
# frontend resolves a missing node's pack through it): the stock nodes' is "comfy-core" at the ComfyUI version
# the workflows are generated against (checked against the live server), ours is pyproject's [project] name
# and version, the Comfy Registry's id and version of the pack.
CORE_PACK = "comfy-core"
COMFYUI_VERSION = "0.3.75"
NOTE_TYPES = ("MarkdownNote", "Note")  # frontend-only nodes: not in /object_info, not sent to the server
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
SEED_NAMES = ("seed", "noise_seed")  # INT widgets the frontend gives a "control after generate" widget
NOTE_COLOURS = {"color": "#432", "bgcolor": "#653"}
FRONTEND_DOWNLOADABLE = (".safetensors", ".sft")  # what the frontend's missing-models dialog will fetch

# Which widget inputs name a model file, and the ComfyUI model folder each is looked up in.
MODEL_FILE_INPUTS = {
    ("DiffBodySwinIRLoader", "model_name"): "upscale_models",
    ("DiffBodyPoseEstimator", "dwpose_detector"): "diffbody_pose",
    ("DiffBodyPoseEstimator", "dwpose_estimator"): "diffbody_pose",
    ("DiffBodyPoseEstimator", "openpose_model"): "diffbody_pose",
    ("DiffBodyLlavaCaption", "model"): "LLM",
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("DiffBodyStage1Loader", "unet_name"): "diffbody",
    ("DiffBodyStage1Loader", "controlnet_name"): "diffbody",
    ("DiffBodyMultiPriorControlNetLoader", "controlnet_name"): "diffbody",
    ("DiffBodyColourAdapterLoader", "adapter_name"): "ipadapter",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("DiffBodyDepthNormalEstimator", "depth_model"): "diffbody_priors",
    ("DiffBodyDepthNormalEstimator", "normal_source"): "diffbody_priors",
}
NO_FILE_CHOICES = ("none", "from depth")  # Stage 1 Loader's controlnet_name; the estimator's normal_source
# The pose node names the files of every backend; only the chosen backend's are needed.
POSE_BACKEND_FILES = {"dwpose": ("dwpose_detector", "dwpose_estimator"), "openpose": ("openpose_model",),
                      "mmpose": ("dwpose_detector",), "mediapipe": ()}


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[float, float]
    size: tuple[float, float]
    title: str | None = None
    widgets: dict = field(default_factory=dict)  # input name -> value (others: the input's default)
    links: dict = field(default_factory=dict)  # input name -> (source node id, output slot)
    text: str = ""  # notes only


@dataclass
class Group:
    title: str
    node_ids: tuple[int, ...]
    color: str


@dataclass
class Workflow:
    name: str
    nodes: list[Node]
    groups: list[Group]


# -- shared pieces -------------------------------------------------------------------------------------

CAPTION_SETTINGS = {"user_text": "", "text_mode": "append", "max_new_tokens": 77, "seed": 0, "dtype": "auto",
                    "quantization": "none", "auto_download": False}
# Every value a mode has a default for comes from pipelines/presets.py, as on the command line.
PAPER = MODE_DEFAULTS["diffbody"]
PUBLIC = MODE_DEFAULTS["public"]
STAGE1_SETTINGS = {"seed": PAPER.seed, "steps": PAPER.stage1_steps, "scheduler": PAPER.stage1_scheduler,
                   "cfg": PAPER.stage1_cfg, "control_strength": 1.0, "size_mode": "bucket"}


def strength_widgets(preset) -> dict:
    return dict(zip(("image_strength", "pose_strength", "depth_strength", "normal_strength"), preset.strengths))


def ksampler_widgets(preset) -> dict:
    sampler_name, scheduler = KSAMPLER_NAMES[preset.stage2_scheduler]
    return {"seed": preset.seed, "steps": preset.stage2_steps, "cfg": preset.stage2_cfg,
            "sampler_name": sampler_name, "scheduler": scheduler, "denoise": 1.0}


def stage0_nodes(preset, *, keep_llava_loaded: bool) -> list[Node]:
    return [
        Node(1, "LoadImage", (0, 0), (320, 360), "Load the degraded photo (I_LQ)", {"image": "example.png"}),
        Node(2, "DiffBodySwinIRLoader", (0, 430), (320, 82), "SwinIR cleaner",
             {"model_name": "general_swinir_v1.ckpt", "auto_download": False}),
        Node(3, "DiffBodySwinIRCleanup", (370, 0), (330, 130), "Stage 0: SwinIR cleanup -> I_ir",
             {"upscale": preset.upscale, "tile_size": 512, "tile_stride": 256}, {"swinir": (2, 0), "image": (1, 0)}),
        Node(4, "DiffBodyPoseEstimator", (370, 180), (330, 300), "Pose skeleton I_pose (DWPose)",
             {"backend": "dwpose", "draw_hands": False, "draw_face": False, "dwpose_detector": "yolox_l.onnx",
              "dwpose_estimator": "dw-ll_ucoco_384.onnx", "openpose_model": "body_pose_model.pth",
              "auto_download": False, "xinsir_sticks": preset.xinsir_sticks}, {"image": (3, 0)}),
        Node(5, "DiffBodyLlavaCaption", (370, 530), (330, 420), "Caption p = LLaVA(I_ir)",
             {"model": "llava-1.5-7b-hf", **CAPTION_SETTINGS, "keep_loaded": keep_llava_loaded},
             {"image": (3, 0)}),
    ]


def stage1_nodes() -> list[Node]:
    return [
        Node(10, "CheckpointLoaderSimple", (760, 0), (360, 98), "SD 2.1-base (stage 1's VAE and CLIP)",
             {"ckpt_name": "v2-1_512-ema-pruned.safetensors"}),
        Node(11, "CLIPTextEncode", (760, 150), (360, 100), "Stage 1 positive: caption p", {"text": ""},
             {"text": (5, 0), "clip": (10, 1)}),
        Node(12, "CLIPTextEncode", (760, 300), (360, 130), "Stage 1 negative", {"text": ""}, {"clip": (10, 1)}),
        Node(13, "DiffBodyStage1Loader", (760, 480), (360, 106), "DiffBody Stage 1 Loader",
             {"unet_name": "diffbody_stage1_unet.safetensors",
              "controlnet_name": "diffbody_stage1_controlnet.safetensors", "dtype": "auto"}),
        Node(14, "DiffBodyStage1Sampler", (1160, 0), (340, 330), "Stage 1: I_res, I_depth, I_normal",
             STAGE1_SETTINGS, {"stage1": (13, 0), "vae": (10, 2), "positive": (11, 0), "negative": (12, 0),
                               "image": (3, 0), "pose_image": (4, 0)}),
    ]


# Stage 2 samples on the canvas of "DiffBody Stage 2 Canvas" (node 44): the command line's bucket, not I_ir's size.
CANVAS_PRIORS = {"image": (44, 0), "pose": (44, 1), "depth": (44, 2), "normal": (44, 3)}


def canvas_nodes(*, x: float, y: float, colour: tuple, depth: tuple, normal: tuple) -> list[Node]:
    """I_ir (node 3), I_pose (node 4), depth, normal and the colour source onto the stage-2 canvas (44), whose
    size makes the latent (38 -> 39)."""
    return [
        Node(44, "DiffBodyStage2Canvas", (x, y), (360, 190), "Stage 2 canvas (bounded size)", {"size_mode": "bucket"},
             {"image": (3, 0), "pose": (4, 0), "depth": depth, "normal": normal, "colour": colour}),
        Node(38, "GetImageSize", (x, y + 240), (240, 100), "Size of the canvas", links={"image": (44, 0)}),
        Node(39, "EmptyLatentImage", (x, y + 390), (300, 106), "Latent of the canvas's size",
             {"width": 512, "height": 512, "batch_size": 1},
             {"width": (38, 0), "height": (38, 1), "batch_size": (38, 2)}),
    ]


def back_to_size_node(*, x: float, y: float) -> Node:
    return Node(45, "DiffBodyStage2BackToSize", (x, y), (320, 66), "Back to I_ir's size",
                links={"image": (41, 0), "plan": (44, 5)})


def model_table(workflow_nodes: list[Node], object_info: dict) -> str:
    """A Markdown table of every model file the workflow needs: file, folder, where to get it."""
    from comfyui_diffbody.models.files import FOLDERS, KNOWN_FILES

    rows = []
    for name, folder in needed_model_files(workflow_nodes, object_info):
        known = KNOWN_FILES[name]
        where = (f"[{known.repo_id}]({known.url})" if known.downloadable else f"<{known.source_page}>"
                 if known.source_page else "not public: trained with this pack")
        kind = "folder" if known.is_dir else "file"
        rows.append(f"| `{name}` ({kind}) | `models/{FOLDERS[folder].relative_dir}/` | {where} |")
    return "| model | put it in | get it from |\n| --- | --- | --- |\n" + "\n".join(dict.fromkeys(rows))


def needed_model_files(workflow_nodes: list[Node], object_info: dict) -> list[tuple[str, str]]:
    files = []
    for node in workflow_nodes:
        if node.type in NOTE_TYPES:
            continue
        values = widget_values_by_name(node, object_info)
        for (class_type, input_name), folder in MODEL_FILE_INPUTS.items():
            if class_type != node.type or input_name in node.links:
                continue
            if values.get(input_name) in (None, *NO_FILE_CHOICES):
                continue
            if class_type == "DiffBodyPoseEstimator" and input_name not in POSE_BACKEND_FILES[values["backend"]]:
                continue
            files.append((values[input_name], folder))
    return files


# -- the workflows -------------------------------------------------------------------------------------

FULL_OVERVIEW = """# DiffBody: full pipeline (trained DiffBody weights)

Restores a photo of a person in the paper's two diffusion stages. Pick your photo in **Load the degraded photo**
and press Run: the result is saved as `diffbody_*.png` in ComfyUI's output folder, and **DiffBody Before/After**
shows input and result under a split you can drag.

1. **Stage 0**: SwinIR cleans the photo (I_ir), DWPose draws the skeleton (I_pose), LLaVA writes the caption p.
2. **Stage 1**: the joint SD 2.1 model turns I_ir, I_pose and p into I_res, I_depth and I_normal (previewed).
3. **Re-caption**: LLaVA describes I_res again (p'), as the paper does.
4. **Stage 2**: SDXL with the multi-prior ControlNet (I_ir, I_pose, I_depth, I_normal, strengths a1..a4) and
   the colour adapter (on I_res), sampled by the stock KSampler.

DiffBody's own weights are not public: train them with the pack, or use the `diffbody_public` workflow.

Model files (paths below `ComfyUI/models/`):

{models}
"""

KEEP_LOADED_LINE = ("  `keep_loaded` is on so the re-caption after stage 1 does not load LLaVA again (it waits in "
                    "RAM).\n")
STAGE0_NOTE = """## Stage 0
- **SwinIR cleanup** removes blur, noise and JPEG damage. `upscale` 1 keeps the photo's size; for small or
  low-resolution photos raise it (e.g. 2) so I_ir's sides end up about 512-1024 px, the sizes DiffBody was
  trained at.
- **Pose**: DWPose (`backend`), every person, OpenPose colours on black.
- **Caption**: LLaVA 1.5 describes clothing, colours, pose and setting; `user_text` adds your own words.
""" + KEEP_LOADED_LINE

STAGE1_NOTE = """## Stage 1
Load Checkpoint with SD 2.1-base gives the VAE and CLIP; its MODEL is not used (the DiffBody Stage 1 Loader
brings the joint UNet and its ControlNet). The caption p is wired into CLIP Text Encode's text.

The sampler works on the paper's training sizes (`size_mode` bucket: 512x512 ... 1024x512) and resizes its
three results back to I_ir's size. **DDPM, 200 steps** are the paper's; `ddim` at 50 or `dpmpp_2m` at 20-30
steps are several times faster. The paper states no guidance scale: cfg 7.5 is SD 2.1's usual value.
"""

STAGE2_NOTE = """## Stage 2: settings
- **Sampler**: the paper samples with **DDPM, 200 steps**: KSampler `ddpm` with scheduler `ddim_uniform`
  (the 200 evenly spaced training timesteps of the paper's DDPM). Faster: `dpmpp_2m` + `karras` at 30 steps,
  or `euler` + `normal` at 30. cfg 5.0: the paper states none; 4-7 is SDXL's usual range.
- **Prior strengths a1..a4** (image = I_ir, pose, depth, normal) are 1.0, the setting the ControlNet was
  trained with; lower one to loosen that prior, 0 leaves it out. The ControlNet takes I_ir, not I_res (paper, eq. 3).
- **Colour adapter**: CLIP ViT-H features of I_res steer the colours; `weight` 1.0.
"""

LATENT_NOTE = """## Stage 2: a bounded size
**DiffBody Stage 2 Canvas** puts I_ir, the priors and the colour source on the nearest of the paper's training
sizes (512x512 ... 1024x512), as the command line's stage 2 does; **Get Image Size** of that canvas ->
**Empty Latent Image**; **DiffBody Stage 2 Back To Size** crops and resizes the decoded result to I_ir's size.
- Bounded: a 3000x2000 scan is sampled at 768x512, not as a 6-megapixel SDXL run (memory and time grow with
  the area, and SDXL drifts far from its sizes). The result still has the input's size times SwinIR's
  `upscale`. `size_mode` native samples at I_ir's own size instead (padded to a multiple of 64).
- Pure noise, as the paper's stage 2 starts: KSampler adds its noise *to* the latent it is given even at
  denoise 1.0, so a VAE Encode of I_ir would leak the SwinIR image into the start. batch_size follows the
  image batch.
"""

PRIORS_OVERVIEW = """# DiffBody: priors only

Runs stage 0 and stage 1 and saves every prior stage 2 uses, for inspection or for other workflows:
`diffbody_priors/I_ir` (SwinIR cleanup), `I_pose` (skeleton), `I_res`, `I_depth`, `I_normal` (stage 1), and
shows the caption p. Settings as in `diffbody_full` (DDPM, 200 steps; `ddim` 50 or `dpmpp_2m` 20-30 are
faster). Stage 1's SD 2.1 checkpoint only provides the VAE and CLIP.

Model files (paths below `ComfyUI/models/`):

{models}
"""


def full_workflow(object_info: dict) -> Workflow:
    nodes = stage0_nodes(PAPER, keep_llava_loaded=True) + stage1_nodes() + [
        Node(15, "PreviewImage", (1540, 0), (280, 300), "Stage 1: I_res", links={"images": (14, 0)}),
        Node(16, "PreviewImage", (1540, 350), (280, 300), "Stage 1: I_depth", links={"images": (14, 1)}),
        Node(17, "PreviewImage", (1540, 700), (280, 300), "Stage 1: I_normal", links={"images": (14, 2)}),
        Node(20, "DiffBodyLlavaCaption", (1880, 0), (330, 420), "Re-caption p' = LLaVA(I_res)",
             {"model": "llava-1.5-7b-hf", **CAPTION_SETTINGS, "keep_loaded": False}, {"image": (14, 0)}),
        Node(21, "PreviewAny", (1880, 470), (330, 160), "Show p'", links={"source": (20, 0)}),
        Node(30, "CheckpointLoaderSimple", (2270, 0), (360, 98), "SDXL base (stage 2)",
             {"ckpt_name": "sd_xl_base_1.0.safetensors"}),
        Node(31, "CLIPTextEncode", (2270, 150), (360, 100), "Stage 2 positive: caption p'", {"text": ""},
             {"text": (20, 0), "clip": (30, 1)}),
        Node(32, "CLIPTextEncode", (2270, 300), (360, 130), "Stage 2 negative", {"text": ""}, {"clip": (30, 1)}),
        Node(33, "DiffBodyMultiPriorControlNetLoader", (2270, 480), (360, 82), "DiffBody Multi-Prior ControlNet",
             {"controlnet_name": "diffbody_stage2_controlnet.safetensors", "dtype": "auto"}),
        Node(35, "DiffBodyColourAdapterLoader", (2270, 610), (360, 82), "DiffBody Colour Adapter",
             {"adapter_name": "diffbody_colour_adapter.safetensors", "auto_download": False}),
        Node(36, "CLIPVisionLoader", (2270, 740), (360, 58), "CLIP ViT-H (colour adapter)",
             {"clip_name": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"}),
        *canvas_nodes(x=2270, y=850, colour=(14, 0), depth=(14, 1), normal=(14, 2)),
        Node(34, "DiffBodyApplyMultiPriorControlNet", (2680, 0), (340, 430),
             "Priors: a1 I_ir, a2 pose, a3 depth, a4 normal",
             {**strength_widgets(PAPER), "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0},
             {"positive": (31, 0), "negative": (32, 0), "control_net": (33, 0), **CANVAS_PRIORS}),
        Node(37, "DiffBodyApplyColourAdapter", (2680, 480), (340, 190), "Colour adapter on I_res",
             {"weight": PAPER.adapter_weight, "start_percent": 0.0, "end_percent": 1.0},
             {"model": (30, 0), "colour_adapter": (35, 0), "clip_vision": (36, 0), "image": (44, 4)}),
        Node(40, "KSampler", (3070, 0), (320, 262), "Stage 2 sampler (DDPM, 200 steps)",
             ksampler_widgets(PAPER),
             {"model": (37, 0), "positive": (34, 0), "negative": (34, 1), "latent_image": (39, 0)}),
        Node(41, "VAEDecode", (3070, 320), (210, 46), "Decode (SDXL VAE)", links={"samples": (40, 0), "vae": (30, 2)}),
        back_to_size_node(x=3070, y=410),
        Node(42, "SaveImage", (3440, 0), (440, 480), "Restored photo", {"filename_prefix": "diffbody"},
             {"images": (45, 0)}),
        Node(43, "DiffBodyBeforeAfter", (3440, 530), (440, 480), "Before / after", links={"before": (1, 0),
                                                                                          "after": (45, 0)}),
    ]
    notes = [
        Node(90, "MarkdownNote", (0, -560), (760, 500), "About this workflow",
             text=FULL_OVERVIEW.format(models=model_table(nodes, object_info))),
        Node(91, "MarkdownNote", (0, 570), (320, 450), "Stage 0", text=STAGE0_NOTE),
        Node(92, "MarkdownNote", (760, 640), (360, 360), "Stage 1", text=STAGE1_NOTE),
        Node(93, "MarkdownNote", (2680, 720), (340, 420), "Stage 2 settings", text=STAGE2_NOTE),
        Node(94, "MarkdownNote", (3070, 530), (320, 560), "Stage 2 size", text=LATENT_NOTE),
    ]
    groups = [
        Group("Stage 0: SwinIR cleanup (I_ir), pose (I_pose), caption (p)", (1, 2, 3, 4, 5, 91), "#3f789e"),
        Group("Stage 1: joint diffusion -> I_res, I_depth, I_normal", (10, 11, 12, 13, 14, 15, 16, 17, 92),
              "#8A8"),
        Group("Re-caption p' on I_res", (20, 21), "#b58b2a"),
        Group("Stage 2: SDXL + multi-prior ControlNet + colour adapter", (30, 31, 32, 33, 34, 35, 36, 37, 38, 39,
                                                                          40, 41, 44, 45, 93, 94), "#a1309b"),
        Group("Result", (42, 43), "#444"),
    ]
    return Workflow("diffbody_full", notes + nodes, groups)


def priors_workflow(object_info: dict) -> Workflow:
    save = "SaveImage"
    nodes = stage0_nodes(PAPER, keep_llava_loaded=False) + stage1_nodes() + [
        Node(6, save, (370, 1000), (330, 320), "Save I_ir", {"filename_prefix": "diffbody_priors/I_ir"},
             {"images": (3, 0)}),
        Node(7, save, (0, 560), (320, 320), "Save I_pose", {"filename_prefix": "diffbody_priors/I_pose"},
             {"images": (4, 0)}),
        Node(8, "PreviewAny", (0, 930), (320, 160), "Show the caption p", links={"source": (5, 0)}),
        Node(15, save, (1540, 0), (280, 320), "Save I_res", {"filename_prefix": "diffbody_priors/I_res"},
             {"images": (14, 0)}),
        Node(16, save, (1540, 370), (280, 320), "Save I_depth", {"filename_prefix": "diffbody_priors/I_depth"},
             {"images": (14, 1)}),
        Node(17, save, (1540, 740), (280, 320), "Save I_normal", {"filename_prefix": "diffbody_priors/I_normal"},
             {"images": (14, 2)}),
    ]
    notes = [
        Node(90, "MarkdownNote", (0, -500), (760, 440), "About this workflow",
             text=PRIORS_OVERVIEW.format(models=model_table(nodes, object_info))),
        Node(92, "MarkdownNote", (760, 640), (360, 360), "Stage 1", text=STAGE1_NOTE),
    ]
    groups = [
        Group("Stage 0: SwinIR cleanup (I_ir), pose (I_pose), caption (p)", (1, 2, 3, 4, 5, 6, 7, 8), "#3f789e"),
        Group("Stage 1: joint diffusion -> I_res, I_depth, I_normal", (10, 11, 12, 13, 14, 15, 16, 17, 92),
              "#8A8"),
    ]
    return Workflow("diffbody_priors", notes + nodes, groups)


PUBLIC_OVERVIEW = """# DiffBody: public weights (no DiffBody weights needed)

Restores a photo of a person with DiffBody's structure built from public models only. Pick your photo in
**Load the degraded photo** and press Run: the result is saved as `diffbody_public_*.png` in ComfyUI's output
folder, and **DiffBody Before/After** shows input and result under a split you can drag.

1. **Stage 0**: SwinIR cleans the photo (I_ir), DWPose draws the skeleton (I_pose), LLaVA writes the caption p.
2. **Depth & normal priors**: public estimators on I_ir (Depth Anything V2, Marigold normals) stand in for
   stage 1's I_depth and I_normal (there are no public stage-1 weights, so there is no I_res either).
3. **Stage 2**: SDXL with **ControlNet-Union SDXL** applied once per prior by DiffBody Apply Multi-Prior
   ControlNet (I_ir as *tile*, I_pose as *openpose*, depth, normal; strengths a1..a4) and **IP-Adapter Plus XL**
   (the paper's initialisation of the colour adapter) on I_ir, sampled by the stock KSampler.

An approximation of DiffBody from public parts, not the paper's trained model: use `diffbody_full` with trained
DiffBody weights for that.

Model files (paths below `ComfyUI/models/`; every one is public):

{models}
"""

PUBLIC_STAGE0_NOTE = """## Stage 0
- **SwinIR cleanup**: `upscale` 1 keeps the photo's size; for small or low-resolution photos raise it (e.g. 2)
  so I_ir's sides end up about 512-1024 px, SDXL's sizes.
- **Pose**: DWPose (`backend`), every person, OpenPose colours on black: ControlNet-Union's *openpose* input.
  `xinsir_sticks` is on: the limbs are drawn wider on larger images, as xinsir's ControlNets were trained.
- **Caption**: LLaVA 1.5 describes clothing, colours, pose and setting (stage 2's prompt); `user_text` adds
  your own words. There is no re-caption: without stage 1 there is no I_res to describe.
"""

ESTIMATOR_NOTE = """## Depth & normal priors
- **Depth**: `Depth-Anything-V2-Small-hf` (Apache-2.0). `-Base-hf` and `-Large-hf` are sharper but
  CC-BY-NC-4.0 (non-commercial); `dpt-hybrid-midas` is the MiDaS the paper annotated with.
- **Normals**: Marigold normals v1.1, 4 denoising steps per image; `from depth` needs no extra model but is
  coarser. Colours follow ControlNet 1.1 (red = facing left, green = up, blue = towards the camera), the
  convention ControlNet-Union's *normal* type reads.
"""

PUBLIC_STAGE2_NOTE = """## Stage 2: settings
- **ControlNet-Union SDXL** must be xinsir's **ProMax** file (`diffusion_pytorch_model_promax.safetensors`,
  saved as `controlnet-union-sdxl-1.0.safetensors`): the 6-type file has no *tile*, which I_ir needs. Each
  prior is one pass of the union with its own type and strength, the residuals added up.
- **Strengths**: I_ir (tile) 1.0, pose, depth and normal 0.5: starting points, not tuned values (four
  union passes at 1.0 each over-constrain SDXL more than one trained multi-prior ControlNet does). 0 leaves a
  prior out.
- **IP-Adapter Plus XL** on I_ir carries its colours: `weight` 0.6; higher follows I_ir's colours (and its
  blur) more closely.
- **Sampler**: **DDPM, 200 steps** as the paper's stage 2 (KSampler `ddpm` + `ddim_uniform`); `dpmpp_2m` +
  `karras` at 30 steps is several times faster. cfg 5.0.
"""


def public_workflow(object_info: dict) -> Workflow:
    nodes = stage0_nodes(PUBLIC, keep_llava_loaded=False) + [
        Node(8, "DiffBodyDepthNormalEstimator", (760, 0), (360, 230), "Depth & normal priors (public estimators)",
             {"depth_model": PUBLIC_DEPTH_MODEL, "normal_source": PUBLIC_NORMAL_SOURCE,
              "marigold_steps": 4, "seed": PUBLIC.seed, "auto_download": False}, {"image": (3, 0)}),
        Node(15, "PreviewImage", (760, 280), (360, 300), "I_depth", links={"images": (8, 0)}),
        Node(16, "PreviewImage", (760, 630), (360, 300), "I_normal", links={"images": (8, 1)}),
        Node(30, "CheckpointLoaderSimple", (1180, 0), (360, 98), "SDXL base (stage 2)",
             {"ckpt_name": "sd_xl_base_1.0.safetensors"}),
        Node(31, "CLIPTextEncode", (1180, 150), (360, 100), "Stage 2 positive: caption p", {"text": ""},
             {"text": (5, 0), "clip": (30, 1)}),
        Node(32, "CLIPTextEncode", (1180, 300), (360, 130), "Stage 2 negative", {"text": ""}, {"clip": (30, 1)}),
        Node(33, "ControlNetLoader", (1180, 480), (360, 58), "ControlNet-Union SDXL (ProMax)",
             {"control_net_name": "controlnet-union-sdxl-1.0.safetensors"}),
        Node(35, "DiffBodyColourAdapterLoader", (1180, 590), (360, 82), "IP-Adapter Plus XL (colour adapter)",
             {"adapter_name": "ip-adapter-plus_sdxl_vit-h.safetensors", "auto_download": False}),
        Node(36, "CLIPVisionLoader", (1180, 720), (360, 58), "CLIP ViT-H (IP-Adapter's image encoder)",
             {"clip_name": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"}),
        *canvas_nodes(x=1180, y=830, colour=(3, 0), depth=(8, 0), normal=(8, 1)),
        Node(34, "DiffBodyApplyMultiPriorControlNet", (1590, 0), (340, 430),
             "Union priors: a1 I_ir (tile), a2 pose, a3 depth, a4 normal",
             {**strength_widgets(PUBLIC), "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0},
             {"positive": (31, 0), "negative": (32, 0), "control_net": (33, 0), **CANVAS_PRIORS}),
        Node(37, "DiffBodyApplyColourAdapter", (1590, 480), (340, 190), "IP-Adapter Plus XL on I_ir",
             {"weight": PUBLIC.adapter_weight, "start_percent": 0.0, "end_percent": 1.0},
             {"model": (30, 0), "colour_adapter": (35, 0), "clip_vision": (36, 0), "image": (44, 4)}),
        Node(40, "KSampler", (1980, 0), (320, 262), "Stage 2 sampler (DDPM, 200 steps)",
             ksampler_widgets(PUBLIC),
             {"model": (37, 0), "positive": (34, 0), "negative": (34, 1), "latent_image": (39, 0)}),
        Node(41, "VAEDecode", (1980, 320), (210, 46), "Decode (SDXL VAE)", links={"samples": (40, 0), "vae": (30, 2)}),
        back_to_size_node(x=1980, y=410),
        Node(42, "SaveImage", (2350, 0), (440, 480), "Restored photo", {"filename_prefix": "diffbody_public"},
             {"images": (45, 0)}),
        Node(43, "DiffBodyBeforeAfter", (2350, 530), (440, 480), "Before / after", links={"before": (1, 0),
                                                                                          "after": (45, 0)}),
    ]
    notes = [
        Node(90, "MarkdownNote", (0, -600), (760, 540), "About this workflow",
             text=PUBLIC_OVERVIEW.format(models=model_table(nodes, object_info))),
        Node(91, "MarkdownNote", (0, 570), (320, 420), "Stage 0", text=PUBLIC_STAGE0_NOTE),
        Node(92, "MarkdownNote", (760, 980), (360, 330), "Depth & normal priors", text=ESTIMATOR_NOTE),
        Node(93, "MarkdownNote", (1590, 720), (340, 560), "Stage 2 settings", text=PUBLIC_STAGE2_NOTE),
        Node(94, "MarkdownNote", (1980, 530), (320, 560), "Stage 2 size", text=LATENT_NOTE),
    ]
    groups = [
        Group("Stage 0: SwinIR cleanup (I_ir), pose (I_pose), caption (p)", (1, 2, 3, 4, 5, 91), "#3f789e"),
        Group("Depth & normal priors from public estimators (instead of stage 1)", (8, 15, 16, 92), "#8A8"),
        Group("Stage 2: SDXL + ControlNet-Union + IP-Adapter Plus XL", (30, 31, 32, 33, 34, 35, 36, 37, 38, 39,
                                                                        40, 41, 44, 45, 93, 94), "#a1309b"),
        Group("Result", (42, 43), "#444"),
    ]
    return Workflow("diffbody_public", notes + nodes, groups)


GROUP_OVERVIEW = """# DiffBody: group photos, person by person (public weights)

For photos of several people. The public-weights pipeline at the picture's size gives each person a few hundred
pixels; here every person is restored as a crop of their own at an SDXL training size (512x512 ... 1024x512),
with their own skeleton, caption, depth and normal priors, and pasted back over the cleaned picture with a
feathered mask that follows the person. Pick your photo in **Load the degraded photo** and press Run: the result
is saved as `diffbody_group_*.png`.

1. **Stage 0 on the whole picture**: SwinIR cleans it (I_ir, also the background of the result), DWPose finds
   every person (their keypoints).
2. **DiffBody Crop People** cuts one crop per person from I_ir: the keypoints' extent with context, cut to the
   nearest bucket's aspect. The crops leave as a list: every node after it runs once per crop.
3. **Per crop**: **DiffBody Draw Pose** draws that person's skeleton alone, LLaVA captions the crop, the public
   estimators give its depth and normal, and stage 2 (SDXL + ControlNet-Union + IP-Adapter Plus XL, as in
   `diffbody_public`) restores it.
4. **DiffBody Paste People** puts every restored person back; where people overlap, the one lower in the picture
   (nearer the camera) ends on top.

Model files (paths below `ComfyUI/models/`; every one is public):

{models}
"""

GROUP_NOTE = """## Per-person settings
- **context** (Crop People): surroundings kept around each person, a fraction of their longer side.
- **regions** `face`: square 512x512 crops around each head instead, for a face pass over an already restored
  picture: feed that picture to both Crop People's and Paste People's `image`, replace Empty Latent Image by a
  VAE Encode of the crops (SDXL's VAE) and lower KSampler's `denoise` (e.g. 0.35), so each face is refined,
  not drawn anew. `restore --per-person --face-pass` does this on the command line.
- **batch_size** 1: every person is sampled alone with their own caption, one crop on the device at a time.
  Larger batches of crops sharing a bucket are faster on a GPU but share one caption.
- The caption's `keep_loaded` is on: ComfyUI runs the caption once per crop, and LLaVA would otherwise load
  again for every person (it waits in RAM, off the GPU, while SDXL samples).
- The background is I_ir: for a restored background, connect the output of `diffbody_public` (the same
  picture restored whole) to Paste People's `image` instead. `restore --per-person` does both in one command.
"""


def group_workflow(object_info: dict) -> Workflow:
    crops, crop_data, keypoints = (50, 0), (50, 1), (50, 3)
    load, swinir_loader, cleanup, pose, caption = stage0_nodes(PUBLIC, keep_llava_loaded=True)
    caption.links, caption.pos, caption.title = {"image": crops}, (1180, 0), "Caption of each crop"
    pose.title = "Every person's keypoints (DWPose)"
    nodes = [load, swinir_loader, cleanup, pose, Node(
        50, "DiffBodyCropPeople", (760, 0), (360, 300), "Crop People: one crop per person",
        {"regions": "person", "batch_size": 1}, {"image": (3, 0), "keypoints": (4, 1)}),
        Node(53, "PreviewImage", (760, 350), (360, 300), "The crops", links={"images": crops}),
        Node(51, "DiffBodyDrawPose", (1180, 470), (360, 150), "Each person's own skeleton",
             {"xinsir_sticks": PUBLIC.xinsir_sticks}, {"keypoints": keypoints, "image": crops}),
        caption,
        Node(8, "DiffBodyDepthNormalEstimator", (1180, 670), (360, 230), "Depth & normal of each crop",
             {"depth_model": PUBLIC_DEPTH_MODEL, "normal_source": PUBLIC_NORMAL_SOURCE,
              "marigold_steps": 4, "seed": PUBLIC.seed, "auto_download": False}, {"image": crops}),
        Node(30, "CheckpointLoaderSimple", (1600, 0), (360, 98), "SDXL base (stage 2)",
             {"ckpt_name": "sd_xl_base_1.0.safetensors"}),
        Node(31, "CLIPTextEncode", (1600, 150), (360, 100), "Stage 2 positive: each crop's caption", {"text": ""},
             {"text": (5, 0), "clip": (30, 1)}),
        Node(32, "CLIPTextEncode", (1600, 300), (360, 130), "Stage 2 negative", {"text": ""}, {"clip": (30, 1)}),
        Node(33, "ControlNetLoader", (1600, 480), (360, 58), "ControlNet-Union SDXL (ProMax)",
             {"control_net_name": "controlnet-union-sdxl-1.0.safetensors"}),
        Node(35, "DiffBodyColourAdapterLoader", (1600, 590), (360, 82), "IP-Adapter Plus XL (colour adapter)",
             {"adapter_name": "ip-adapter-plus_sdxl_vit-h.safetensors", "auto_download": False}),
        Node(36, "CLIPVisionLoader", (1600, 720), (360, 58), "CLIP ViT-H (IP-Adapter's image encoder)",
             {"clip_name": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"}),
        Node(38, "GetImageSize", (1600, 830), (240, 100), "Size of the crop", links={"image": crops}),
        Node(39, "EmptyLatentImage", (1600, 980), (300, 106), "Latent of the crop's size",
             {"width": 512, "height": 512, "batch_size": 1},
             {"width": (38, 0), "height": (38, 1), "batch_size": (38, 2)}),
        Node(34, "DiffBodyApplyMultiPriorControlNet", (2010, 0), (340, 430),
             "Union priors: a1 crop (tile), a2 pose, a3 depth, a4 normal",
             {**strength_widgets(PUBLIC), "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0},
             {"positive": (31, 0), "negative": (32, 0), "control_net": (33, 0), "image": crops, "pose": (51, 0),
              "depth": (8, 0), "normal": (8, 1)}),
        Node(37, "DiffBodyApplyColourAdapter", (2010, 480), (340, 190), "IP-Adapter Plus XL on the crop",
             {"weight": PUBLIC.adapter_weight, "start_percent": 0.0, "end_percent": 1.0},
             {"model": (30, 0), "colour_adapter": (35, 0), "clip_vision": (36, 0), "image": crops}),
        Node(40, "KSampler", (2400, 0), (320, 262), "Stage 2 sampler, once per crop", ksampler_widgets(PUBLIC),
             {"model": (37, 0), "positive": (34, 0), "negative": (34, 1), "latent_image": (39, 0)}),
        Node(41, "VAEDecode", (2400, 320), (210, 46), "Decode (SDXL VAE)", links={"samples": (40, 0), "vae": (30, 2)}),
        Node(52, "DiffBodyPastePeople", (2770, 0), (320, 100), "Paste People over I_ir",
             links={"image": (3, 0), "crops": (41, 0), "crop_data": crop_data}),
        Node(42, "SaveImage", (3140, 0), (440, 480), "Restored photo", {"filename_prefix": "diffbody_group"},
             {"images": (52, 0)}),
        Node(43, "DiffBodyBeforeAfter", (3140, 530), (440, 480), "Before / after", links={"before": (1, 0),
                                                                                          "after": (52, 0)}),
    ]
    notes = [
        Node(90, "MarkdownNote", (0, -640), (760, 580), "About this workflow",
             text=GROUP_OVERVIEW.format(models=model_table(nodes, object_info))),
        Node(91, "MarkdownNote", (0, 570), (320, 420), "Stage 0", text=PUBLIC_STAGE0_NOTE),
        Node(92, "MarkdownNote", (760, 700), (360, 420), "Per-person settings", text=GROUP_NOTE),
        Node(93, "MarkdownNote", (2010, 720), (340, 560), "Stage 2 settings", text=PUBLIC_STAGE2_NOTE),
    ]
    groups = [
        Group("Stage 0 on the whole picture: I_ir and every person's keypoints", (1, 2, 3, 4, 91), "#3f789e"),
        Group("One crop per person", (50, 53, 92), "#b58b2a"),
        Group("Each crop's priors: skeleton, caption, depth, normal", (51, 5, 8), "#8A8"),
        Group("Stage 2 per crop: SDXL + ControlNet-Union + IP-Adapter Plus XL",
              (30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 93), "#a1309b"),
        Group("Paste back and result", (52, 42, 43), "#444"),
    ]
    return Workflow("diffbody_group", notes + nodes, groups)


FAST_OVERVIEW = """# Fast mode ({stage1_steps} + {stage2_steps} steps, one caption)

`{base}` with the speed profile of `restore --fast` (`FAST` in pipelines/presets.py): DPM++ 2M on Karras sigmas
at {stage1_steps} steps in stage 1 and {stage2_steps} in stage 2 (KSampler `dpmpp_2m` + `karras`) instead of DDPM
200, and stage 2's prompt is the first caption p (no second LLaVA call: each costs seconds with LLaVA-7B).
Everything else is `{base}`'s, described below.

"""
RECAPTION_NODES = {20, 21}  # diffbody_full's re-caption p' = LLaVA(I_res) and its preview


def fast_variant(build, preset):
    """A builder of `build`'s workflow with presets.FAST: its samplers, and stage 2 prompted by the first
    caption p (node 5) instead of the re-caption, whose nodes are left out."""
    fast = with_speed(preset, FAST)

    def build_fast(object_info: dict) -> Workflow:
        workflow = build(object_info)
        nodes = [node for node in workflow.nodes if node.id not in RECAPTION_NODES]
        for node in nodes:
            if node.type == "KSampler":
                node.widgets, node.title = ksampler_widgets(fast), \
                    f"Stage 2 sampler (DPM++ 2M Karras, {fast.stage2_steps} steps)"
            elif node.type == "DiffBodyStage1Sampler":
                node.widgets = {**node.widgets, "scheduler": fast.stage1_scheduler, "steps": fast.stage1_steps}
            elif node.type == "DiffBodyLlavaCaption":
                node.widgets = {**node.widgets, "keep_loaded": False}
            elif node.id == 31:
                node.links, node.title = {**node.links, "text": (5, 0)}, "Stage 2 positive: caption p"
            elif node.id == 90:
                node.text = FAST_OVERVIEW.format(base=workflow.name, stage1_steps=fast.stage1_steps,
                                                 stage2_steps=fast.stage2_steps) + node.text
            elif node.id == 91:
                node.text = node.text.replace(KEEP_LOADED_LINE, "")
        groups = [group for group in workflow.groups if not set(group.node_ids) & RECAPTION_NODES]
        return Workflow(f"{workflow.name}_fast", nodes, groups)

    return build_fast


WORKFLOWS = (full_workflow, priors_workflow, public_workflow, fast_variant(full_workflow, PAPER),
             fast_variant(public_workflow, PUBLIC), group_workflow)


# -- formats -------------------------------------------------------------------------------------------

def input_specs(class_type: str, object_info: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, optional) of a node's inputs in the frontend's order: required, then optional."""
    info = object_info[class_type]
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    return [(name, info["input"][section][name], section == "optional")
            for section in ("required", "optional") for name in order.get(section, [])]


def widget_kind(spec: list) -> str | None:
    """"COMBO", "INT", "FLOAT", "STRING", "BOOLEAN" for inputs the frontend shows as widgets, else None."""
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if options.get("forceInput"):
        return None
    if isinstance(kind, list) or kind == "COMBO":
        return "COMBO"
    return kind if kind in WIDGET_TYPES else None


def extra_widget_values(name: str, spec: list) -> list:
    """Values of the widgets the frontend adds after an input's own widget."""
    kind, options = widget_kind(spec), (spec[1] if len(spec) > 1 else {})
    control = options.get("control_after_generate")
    if kind == "INT" and (control if control is not None else name in SEED_NAMES):
        return ["fixed"]
    if kind == "COMBO" and control:
        return ["fixed"]
    if kind == "COMBO" and options.get("image_upload"):
        return ["image"]
    return []


def widget_values_by_name(node: Node, object_info: dict) -> dict:
    values = {}
    for name, spec, _ in input_specs(node.type, object_info):
        if widget_kind(spec) is None:
            continue
        if name in node.widgets:
            values[name] = node.widgets[name]
        elif "default" in (spec[1] if len(spec) > 1 else {}):
            values[name] = spec[1]["default"]
        else:
            raise ValueError(f"node {node.id} ({node.type}): no value for '{name}' and no default")
    unknown = set(node.widgets) - set(values)
    if unknown:
        raise ValueError(f"node {node.id} ({node.type}): {sorted(unknown)} are not widgets of {node.type}")
    return values


def to_api(workflow: Workflow, object_info: dict) -> dict:
    prompt = {}
    for node in sorted(workflow.nodes, key=lambda n: n.id):
        if node.type in NOTE_TYPES:
            continue
        values = widget_values_by_name(node, object_info)
        inputs = {}
        for name, spec, optional in input_specs(node.type, object_info):
            if name in node.links:
                source, slot = node.links[name]
                inputs[name] = [str(source), slot]
            elif name in values:
                inputs[name] = values[name]
            elif not optional:
                raise ValueError(f"node {node.id} ({node.type}): required input '{name}' is not connected")
        unknown = set(node.links) - {name for name, _, _ in input_specs(node.type, object_info)}
        if unknown:
            raise ValueError(f"node {node.id} ({node.type}): no inputs named {sorted(unknown)}")
        prompt[str(node.id)] = {"inputs": inputs, "class_type": node.type,
                                "_meta": {"title": node.title or object_info[node.type]["display_name"]}}
    return prompt


def to_ui(workflow: Workflow, object_info: dict) -> dict:
    by_id = {node.id: node for node in workflow.nodes}
    if len(by_id) != len(workflow.nodes):
        raise ValueError(f"{workflow.name}: duplicate node ids")
    ui_nodes, links = {}, []
    for node in sorted(workflow.nodes, key=lambda n: n.id):
        ui_nodes[node.id] = _ui_node(node, object_info)
    for node in sorted(workflow.nodes, key=lambda n: n.id):  # links by target node, then input: stable ids
        if node.type in NOTE_TYPES:
            continue
        target = ui_nodes[node.id]
        for slot, entry in enumerate(target["inputs"]):
            if entry["name"] not in node.links:
                continue
            source_id, source_slot = node.links[entry["name"]]
            output = ui_nodes[source_id]["outputs"][source_slot]
            link_id = len(links) + 1
            links.append([link_id, source_id, source_slot, node.id, slot, output["type"]])
            entry["link"] = link_id
            output["links"] = (output["links"] or []) + [link_id]
    for order, node_id in enumerate(_execution_order(workflow)):
        ui_nodes[node_id]["order"] = order
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-diffbody/workflows/{workflow.name}")),
        "revision": 0,
        "last_node_id": max(by_id),
        "last_link_id": len(links),
        "nodes": list(ui_nodes.values()),
        "links": links,
        "groups": [_ui_group(i + 1, group, by_id) for i, group in enumerate(workflow.groups)],
        "config": {},
        "extra": {"ds": {"scale": 0.45, "offset": [120, 640]}, "frontendVersion": FRONTEND_VERSION},
        "version": 0.4,
    }


def _ui_node(node: Node, object_info: dict) -> dict:
    base = {"id": node.id, "type": node.type, "pos": list(node.pos), "size": list(node.size), "flags": {},
            "order": 0, "mode": 0}
    if node.type in NOTE_TYPES:
        return {**base, "inputs": [], "outputs": [], "title": node.title, "properties": {},
                "widgets_values": [node.text], **NOTE_COLOURS}
    info = object_info[node.type]
    values = widget_values_by_name(node, object_info)
    # The frontend saves socket inputs first, then the widget inputs fed by a link (a linked widget keeps
    # its value, shown greyed out); unlinked widgets live in widgets_values only.
    sockets, linked_widgets, widgets_values = [], [], []
    for name, spec, optional in input_specs(node.type, object_info):
        kind = widget_kind(spec)
        if kind is None:
            entry = {"name": name, "type": spec[0], "link": None}
            sockets.append({**entry, "shape": 7} if optional else entry)
            continue
        widgets_values += [values[name]] + extra_widget_values(name, spec)
        if name in node.links:
            linked_widgets.append({"name": name, "type": kind, "widget": {"name": name}, "link": None})
    inputs = sockets + linked_widgets
    outputs = [{"name": name, "type": kind, "links": None}
               for name, kind in zip(info["output_name"], info["output"])]
    properties = {"Node name for S&R": node.type, **node_pack(node.type, info)}
    models = _downloadable_models(node, values)
    if models:
        properties["models"] = models
    result = {**base, "inputs": inputs, "outputs": outputs}
    if node.title:
        result["title"] = node.title
    return {**result, "properties": properties, "widgets_values": widgets_values}


def pack_identity() -> dict:
    """This pack's "cnr_id" and "ver": pyproject's [project] name and version, read now (not copied here)."""
    import tomllib  # Python 3.11+, like the dev environment that runs this script

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {"cnr_id": project["name"], "ver": project["version"]}


def node_pack(class_type: str, info: dict) -> dict:
    """{"cnr_id", "ver"} of a node: ours for the pack's nodes, comfy-core's for the stock ones (by the
    python_module /object_info gives: "custom_nodes.<folder>" for a pack's node)."""
    from comfyui_diffbody.nodes import NODE_CLASS_MAPPINGS

    if not info["python_module"].startswith("custom_nodes."):
        return {"cnr_id": CORE_PACK, "ver": COMFYUI_VERSION}
    if class_type not in NODE_CLASS_MAPPINGS:
        raise ValueError(f"{class_type} comes from another pack ({info['python_module']}): not a bundled node")
    return pack_identity()


def _downloadable_models(node: Node, values: dict) -> list[dict]:
    from comfyui_diffbody.models.files import KNOWN_FILES

    models = []
    for (class_type, input_name), folder in MODEL_FILE_INPUTS.items():
        known = KNOWN_FILES.get(values.get(input_name)) if class_type == node.type else None
        if known is not None and known.downloadable and known.filename.endswith(FRONTEND_DOWNLOADABLE):
            models.append({"name": known.filename, "url": known.url, "directory": folder})
    return models


def _execution_order(workflow: Workflow) -> list[int]:
    """Notes first, then the nodes sorted so every node comes after its sources (stable by id)."""
    remaining = {node.id: {source for source, _ in node.links.values()} for node in workflow.nodes}
    order = []
    while remaining:
        ready = sorted(node_id for node_id, sources in remaining.items() if not sources - set(order))
        if not ready:
            raise ValueError(f"{workflow.name}: the links form a cycle")
        order += ready
        for node_id in ready:
            del remaining[node_id]
    return order


TITLE_HEIGHT, GROUP_TITLE_HEIGHT, GROUP_PADDING = 30, 40, 12


def _ui_group(group_id: int, group: Group, by_id: dict) -> dict:
    """A group framing its nodes (title bars included) with a margin and room for its own title."""
    members = [by_id[i] for i in group.node_ids]
    left = min(n.pos[0] for n in members) - GROUP_PADDING
    top = min(n.pos[1] - TITLE_HEIGHT for n in members) - GROUP_TITLE_HEIGHT
    right = max(n.pos[0] + n.size[0] for n in members) + GROUP_PADDING
    bottom = max(n.pos[1] + n.size[1] for n in members) + GROUP_PADDING
    return {"id": group_id, "title": group.title, "bounding": [left, top, right - left, bottom - top],
            "color": group.color, "font_size": 24, "flags": {}}


# -- command line --------------------------------------------------------------------------------------

def live_object_info() -> dict:
    """/object_info of a ComfyUI started with the pack (tests/comfy_harness.py: the cached test environment)."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from comfy_harness import ComfyServer, make_base_dir

    with tempfile.TemporaryDirectory() as tmp:
        server = ComfyServer(make_base_dir(Path(tmp), "ComfyUI-DiffBody")).start()
        try:
            version = server.get("/system_stats")["system"]["comfyui_version"]
            if version != COMFYUI_VERSION:
                raise SystemExit(f"the stock nodes are written as comfy-core {COMFYUI_VERSION}, but the server is "
                                 f"ComfyUI {version}: set DIFFBODY_COMFYUI_DIR or change COMFYUI_VERSION")
            return server.object_info()
        finally:
            server.stop()


def render(object_info: dict) -> dict[str, str]:
    """{file name: JSON text} of every bundled workflow this script builds."""
    files = {}
    for build in WORKFLOWS:
        workflow = build(object_info)
        files[f"{workflow.name}.json"] = json.dumps(to_ui(workflow, object_info), indent=2) + "\n"
        files[f"api/{workflow.name}_api.json"] = json.dumps(to_api(workflow, object_info), indent=2) + "\n"
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--object-info", type=Path, help="a saved /object_info answer (default: start ComfyUI)")
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = parser.parse_args()
    object_info = json.loads(args.object_info.read_text()) if args.object_info else live_object_info()
    stale = []
    for name, text in render(object_info).items():
        path = WORKFLOWS_DIR / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO_ROOT)}")
    if stale:
        print("out of date (run scripts/build_workflows.py):", ", ".join(stale))
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
