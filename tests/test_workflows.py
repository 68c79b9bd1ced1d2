"""The bundled workflows (workflows/*.json): both formats present and equivalent, every one runnable end to
end through a real ComfyUI on tiny weights (the current version and the oldest the pack claims), every model
file it names known to the catalogue and named in its notes.

Equivalence: each UI workflow is converted to an API prompt with the live server's /object_info (widget
order, widget vs socket inputs; tests/workflow_format.py, written apart from the generator) and compared
strictly with its `_api.json` twin. Running: the API files go through `POST /prompt` with ComfyUI's
native checkpoint and CLIP-vision loaders swapped for test stand-ins (tests/workflow_tools.py) and, to
keep the run short on the CPU, every `steps` input set to 2 (the bundled 200 are the paper's DDPM setting).
Everything else runs as bundled, on person.png (256x256).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys

import pytest
from PIL import Image

from comfy_harness import REPO_ROOT, execution_error
from conftest import person_photo
from workflow_format import (FRONTEND_ONLY_TYPES, WorkflowFormatError, api_differences, nodes_in_group, ui_to_api,
                             ui_structure_problems)
from workflow_tools import API_DIR, TEST_SUBSTITUTES, WORKFLOWS_DIR, load_workflow, with_test_stand_ins
from comfyui_diffbody.pipelines.buckets import BUCKETS

# Bundled before the UI format existed; diffbody_priors covers the same nodes in both formats.
API_ONLY = {"diffbody_stage0_api.json"}
API_FILES = sorted(p.name for p in API_DIR.glob("*.json"))
UI_FILES = sorted(p.name for p in WORKFLOWS_DIR.glob("*.json") if not p.name.endswith("_api.json"))
PAIRS = [(ui, ui[:-len(".json")] + "_api.json") for ui in UI_FILES]
TEST_STEPS = 2
INPUT_SIZE = 256  # tests/conftest.py's person.png

# Which inputs name a model file, and the ComfyUI model folder the node looks in (checked against the
# catalogue's folder). A string input that looks like a model file but is not listed here fails the test.
MODEL_FILE_INPUTS = {
    ("DiffBodySwinIRLoader", "model_name"): "upscale_models",
    ("DiffBodyPoseEstimator", "dwpose_detector"): "diffbody_pose",
    ("DiffBodyPoseEstimator", "dwpose_estimator"): "diffbody_pose",
    ("DiffBodyPoseEstimator", "openpose_model"): "diffbody_pose",
    ("DiffBodyLlavaCaption", "model"): "LLM",
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("DiffBodyStage1Loader", "unet_name"): "diffbody",
    ("DiffBodyStage1Loader", "controlnet_name"): "diffbody",
    ("DiffBodyMultiPriorControlNetLoader", "controlnet_name"): "diffbody",
    ("DiffBodyColourAdapterLoader", "adapter_name"): "ipadapter",
    ("DiffBodyDepthNormalEstimator", "depth_model"): "diffbody_priors",
    ("DiffBodyDepthNormalEstimator", "normal_source"): "diffbody_priors",
}
NO_FILE_CHOICES = {"none", "from depth"}  # Stage 1 Loader's controlnet_name; the estimator's normal_source
# The optional mmpose backend's files come from mmpose's model zoo, outside the catalogue; the pose node
# carries their defaults whatever the backend.
NOT_CATALOGUED_INPUTS = {("DiffBodyPoseEstimator", "mmpose_config"), ("DiffBodyPoseEstimator", "mmpose_checkpoint")}
POSE_BACKEND_FILES = {"dwpose": {"dwpose_detector", "dwpose_estimator"}, "openpose": {"openpose_model"},
                      "mmpose": {"dwpose_detector"}, "mediapipe": set()}
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pth", ".pt", ".bin", ".onnx", ".sft", ".gguf")


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


def test_every_bundled_workflow_comes_in_both_formats():
    assert {"diffbody_full.json", "diffbody_priors.json"} <= set(UI_FILES)
    missing_api = [api for _, api in PAIRS if not (API_DIR / api).exists()]
    missing_ui = [api for api in API_FILES if api not in API_ONLY and api[:-len("_api.json")] + ".json" not in UI_FILES]
    assert not missing_api and not missing_ui, (missing_api, missing_ui)
    # The template browser lists workflows/*.json and cannot open API files: they live in workflows/api/.
    assert not list(WORKFLOWS_DIR.glob("*_api.json"))
    for name in UI_FILES:
        ui = load_workflow(name)
        assert ui.get("version") == 0.4 and ui["nodes"] and "links" in ui, name
    for name in API_FILES:
        assert all("class_type" in node and "inputs" in node for node in load_workflow(name).values()), name


@pytest.mark.parametrize("ui_name,api_name", PAIRS)
def test_ui_workflow_is_its_api_twin(object_info, ui_name, api_name):
    ui, api = load_workflow(ui_name), load_workflow(api_name)
    assert ui_structure_problems(ui, object_info) == []
    assert api_differences(api, ui_to_api(ui, object_info)) == []


def _node(graph_nodes, node_type, title_part=""):
    return next(n for n in graph_nodes if n["type"] == node_type and title_part in n.get("title", ""))


def _change_widget(ui, api):
    _node(ui["nodes"], "KSampler")["widgets_values"][3] = 5.5  # cfg


def _swap_widgets(ui, api):
    values = _node(ui["nodes"], "DiffBodySwinIRCleanup")["widgets_values"]
    values[1], values[2] = values[2], values[1]  # tile_size <-> tile_stride


def _int_for_float(ui, api):
    sampler = next(n for n in api.values() if n["class_type"] == "KSampler")
    sampler["inputs"]["cfg"] = int(sampler["inputs"]["cfg"])  # 5.0 -> 5


def _drop_control_value(ui, api):
    _node(ui["nodes"], "KSampler")["widgets_values"].pop(1)  # "fixed" after the seed


def _relink_depth_to_normal(ui, api):
    apply = _node(ui["nodes"], "DiffBodyApplyMultiPriorControlNet")
    depth = next(e for e in apply["inputs"] if e["name"] == "depth")
    link = next(link for link in ui["links"] if link[0] == depth["link"])
    link[2] = 3  # the stage-2 canvas's normal output instead of its depth output (2)


def _rewire_api_link(ui, api):
    apply = next(n for n in api.values() if n["class_type"] == "DiffBodyApplyMultiPriorControlNet")
    apply["inputs"]["pose"] = apply["inputs"]["image"]


def _change_api_value(ui, api):
    next(n for n in api.values() if n["class_type"] == "KSampler")["inputs"]["steps"] = 199


def _drop_api_node(ui, api):
    del api[next(k for k, n in api.items() if n["class_type"] == "PreviewAny")]


def _retitle(ui, api):
    _node(ui["nodes"], "SaveImage")["title"] = "Something else"


def _change_class(ui, api):
    next(n for n in api.values() if n["class_type"] == "KSampler")["class_type"] = "KSamplerAdvanced"


@pytest.mark.parametrize("mutate", [_change_widget, _swap_widgets, _int_for_float, _drop_control_value,
                                    _relink_depth_to_normal, _rewire_api_link, _change_api_value, _drop_api_node,
                                    _retitle, _change_class])
def test_a_changed_copy_is_caught(object_info, mutate):
    ui, api = load_workflow("diffbody_full.json"), load_workflow("diffbody_full_api.json")
    assert api_differences(api, ui_to_api(ui, object_info)) == []  # the check passes before the change
    mutate(ui, api)
    try:
        problems = api_differences(api, ui_to_api(ui, object_info)) + ui_structure_problems(ui, object_info)
    except WorkflowFormatError as error:
        problems = [str(error)]
    assert problems, mutate.__name__


def workflow_builder():
    spec = importlib.util.spec_from_file_location("build_workflows", REPO_ROOT / "scripts" / "build_workflows.py")
    builder = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = builder  # its dataclasses look their module up there
    spec.loader.exec_module(builder)
    return builder


def test_generated_files_are_up_to_date(object_info):
    for name, text in workflow_builder().render(object_info).items():
        assert (WORKFLOWS_DIR / name).read_text() == text, f"{name}: run scripts/build_workflows.py"


@pytest.mark.parametrize("ui_name", UI_FILES)
def test_every_node_names_its_pack_as_the_frontend_saves_it(comfy_server, object_info, ui_name):
    """cnr_id/ver, by which the frontend offers to install a missing node's pack: the stock nodes'
    comfy-core at the ComfyUI version tested here, ours pyproject's [project] name and version."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core_version = comfy_server.get("/system_stats")["system"]["comfyui_version"]
    for node in load_workflow(ui_name)["nodes"]:
        if node["type"] in FRONTEND_ONLY_TYPES:
            assert "cnr_id" not in node["properties"], node["type"]
            continue
        ours = object_info[node["type"]]["python_module"].startswith("custom_nodes.")
        expected = (project["name"], project["version"]) if ours else ("comfy-core", core_version)
        assert (node["properties"].get("cnr_id"), node["properties"].get("ver")) == expected, node["type"]


def test_the_generator_reads_the_pack_name_from_pyproject(tmp_path, monkeypatch):
    """A renamed [project] (the registry's id) reaches the workflows without touching the generator."""
    builder = workflow_builder()
    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    renamed = re.sub(r'(?m)^name = ".*"$', 'name = "renamed-pack"', pyproject, count=1)
    (tmp_path / "pyproject.toml").write_text(re.sub(r'(?m)^version = ".*"$', 'version = "9.8.7"', renamed, count=1))
    monkeypatch.setattr(builder, "REPO_ROOT", tmp_path)
    info = {"python_module": "custom_nodes.any-folder"}
    assert builder.node_pack("DiffBodyPoseEstimator", info) == {"cnr_id": "renamed-pack", "ver": "9.8.7"}
    assert builder.node_pack("KSampler", {"python_module": "nodes"}) == {"cnr_id": "comfy-core",
                                                                        "ver": builder.COMFYUI_VERSION}
    with pytest.raises(ValueError, match="another pack"):
        builder.node_pack("SomeoneElsesNode", info)


# -- running -------------------------------------------------------------------------------------------

def runnable(api: dict) -> dict:
    prompt = with_test_stand_ins(api)
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = "person.png"
        if isinstance(node["inputs"].get("steps"), int):
            node["inputs"]["steps"] = TEST_STEPS
    return prompt


def expected_image_size(api: dict) -> int:
    """Every image a bundled workflow shows or saves has I_ir's size: the input times SwinIR's upscale."""
    upscales = {node["inputs"]["upscale"] for node in api.values() if node["class_type"] == "DiffBodySwinIRCleanup"}
    assert len(upscales) <= 1
    return round(INPUT_SIZE * (upscales.pop() if upscales else 1.0))


@pytest.mark.parametrize("api_name", API_FILES)
def test_bundled_workflow_runs_end_to_end_on_tiny_weights(each_comfy_server, api_name):
    """On the current ComfyUI and on the oldest the pack claims (tests/conftest.py)."""
    server = each_comfy_server
    object_info = server.object_info()
    api = load_workflow(api_name)
    prompt = runnable(api)
    assert not {node["class_type"] for node in prompt.values()} & set(TEST_SUBSTITUTES)
    entry = server.run(prompt, timeout=900)
    assert entry["status"]["status_str"] == "success", (execution_error(entry) or {}).get("exception_message")
    side = expected_image_size(api)
    output_nodes = [node_id for node_id, node in prompt.items() if object_info[node["class_type"]]["output_node"]]
    assert output_nodes
    for node_id in output_nodes:
        # previews of "DiffBody Crop People"'s crops (diffbody_group) are at training bucket sizes, not I_ir's
        sizes = BUCKET_SIZES if _shows_crops(prompt, node_id) else {(side, side)}
        shown = entry["outputs"].get(node_id)
        assert shown, f"{api_name}: output node {node_id} ({prompt[node_id]['class_type']}) produced nothing"
        if "text" in shown:
            assert all(text.strip() for text in shown["text"]), node_id
            continue
        files = shown_files(server, shown)
        assert files, node_id
        for path in files:
            assert path.is_file(), path
            with Image.open(path) as image:
                assert image.size in sizes, (api_name, node_id, path.name, image.size)


BUCKET_SIZES = {(width, height) for height, width in BUCKETS}


def _shows_crops(prompt: dict, node_id: str) -> bool:
    """Whether the node is a preview (or save) of "DiffBody Crop People"'s crops."""
    images = prompt[node_id]["inputs"].get("images")
    return isinstance(images, list) and prompt[images[0]]["class_type"] == "DiffBodyCropPeople"


def shown_files(server, shown: dict) -> list:
    """The image files one output node wrote (a before/after node's both sides too)."""
    files = server.output_files({"outputs": {"node": shown}})
    if "diffbody_compare" in shown:
        files += server.output_files({"outputs": {"node": {"images": [
            image for pair in shown["diffbody_compare"] for image in pair.values()]}}})
    return files


# -- stage 2's bounded size ------------------------------------------------------------------------------

LARGE_PHOTO = (2000, 3000)  # (H, W): a scan far above SDXL's sizes
SAMPLED_PREFIX = "stage2_sampled"


def with_sampled_size_saved(prompt: dict) -> dict:
    """The prompt plus a SaveImage on every VAE Decode: what stage 2 sampled, at the size it sampled at."""
    probed = copy.deepcopy(prompt)
    for node_id, node in prompt.items():
        if node["class_type"] == "VAEDecode":
            probed[f"{node_id}_sampled"] = {"class_type": "SaveImage", "inputs": {
                "images": [node_id, 0], "filename_prefix": SAMPLED_PREFIX}}
    return probed


def without_canvas(prompt: dict) -> dict:
    """The prompt with DiffBody Stage 2 Canvas and Back To Size bypassed: each consumer of a canvas output
    takes that output's input instead (stage 2 then samples at I_ir's size), as the workflows were before."""
    bypassed = copy.deepcopy(prompt)
    passes = {}
    for node_id, node in prompt.items():
        if node["class_type"] == "DiffBodyStage2Canvas":
            for slot, name in enumerate(("image", "pose", "depth", "normal", "colour")):
                passes[node_id, slot] = node["inputs"][name]
        elif node["class_type"] == "DiffBodyStage2BackToSize":
            passes[node_id, 0] = node["inputs"]["image"]
    for node_id, _ in passes:
        bypassed.pop(node_id, None)
    for node in bypassed.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and (value[0], value[1]) in passes:
                node["inputs"][name] = passes[value[0], value[1]]
    return bypassed


def image_sizes(server, prompt: dict) -> tuple[set, set]:
    """Runs the prompt: ((W, H) of what stage 2 sampled, (W, H) of every image the workflow itself shows)."""
    entry = server.run(prompt, timeout=1800)
    assert entry["status"]["status_str"] == "success", (execution_error(entry) or {}).get("exception_message")
    sampled, shown = set(), set()
    for node_id, output in entry["outputs"].items():
        for path in shown_files(server, output):
            with Image.open(path) as image:
                (sampled if path.name.startswith(SAMPLED_PREFIX) else shown).add(image.size)
    return sampled, shown


def bucket_size(height: int, width: int) -> tuple[int, int]:
    """(W, H) of the command line's stage-2 canvas for an I_ir of height x width."""
    from comfyui_diffbody.pipelines.buckets import plan_resize

    canvas = plan_resize(height, width, mode="bucket").canvas_size
    return canvas[1], canvas[0]


@pytest.mark.parametrize("api_name", [api for _, api in PAIRS])
def test_a_large_scan_samples_stage_2_at_the_bounded_size_and_keeps_its_own(comfy_server, api_name):
    """A 3000x2000 photo through every bundled workflow: stage 2 (where there is one) samples on the command
    line's bucket, 768x512 (diffbody_group: each crop at its bucket), not at 6 megapixels, and every image the
    workflow shows or saves is 3000x2000 (but the preview of diffbody_group's crops).
    Not the API-only stage-0 file (diffbody_priors runs the same stage 0; its SwinIR x2 to 6000x4000 alone
    took 9 minutes on the 2-core machine)."""
    height, width = LARGE_PHOTO
    photo = Image.fromarray(person_photo()).resize((width, height))
    photo.save(comfy_server.base_dir / "input" / "large_scan.png")
    prompt = with_sampled_size_saved(runnable(load_workflow(api_name)))
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = "large_scan.png"
    has_stage2 = any(node["class_type"] == "KSampler" for node in prompt.values())
    per_crop = any(node["class_type"] == "DiffBodyCropPeople" for node in prompt.values())
    prompt = {node_id: node for node_id, node in prompt.items() if not _shows_crops(prompt, node_id)}
    sampled, shown = image_sizes(comfy_server, prompt)
    if per_crop:  # diffbody_group samples each person's crop at its own training bucket
        assert sampled and sampled <= BUCKET_SIZES, sampled
    else:
        assert sampled == ({bucket_size(height, width)} if has_stage2 else set())
    assert bucket_size(height, width) == (768, 512)
    assert shown == {(width, height)}


def test_the_size_check_fails_without_the_canvas_node(comfy_server):
    """The negative case of the test above (on the small test photo, to keep it short): with the canvas nodes
    bypassed, stage 2 samples at I_ir's 256x256 instead of the 512x512 bucket."""
    prompt = with_sampled_size_saved(runnable(load_workflow("diffbody_public_api.json")))
    bypassed = without_canvas(prompt)
    assert not {node["class_type"] for node in bypassed.values()} & {"DiffBodyStage2Canvas",
                                                                     "DiffBodyStage2BackToSize"}
    sampled, shown = image_sizes(comfy_server, bypassed)
    assert sampled != {bucket_size(INPUT_SIZE, INPUT_SIZE)} and sampled == {(INPUT_SIZE, INPUT_SIZE)}
    assert shown == {(INPUT_SIZE, INPUT_SIZE)}


def comfyui_version(server) -> str:
    return server.get("/system_stats")["system"]["comfyui_version"]


def test_the_claimed_comfyui_range_is_the_tested_one(comfy_server, oldest_comfy_server):
    """pyproject's requires-comfyui and the README start at the oldest ComfyUI the workflows above ran on, and
    the README names the current one too (a server started from the wrong folder reports the wrong version)."""
    from packaging.version import Version

    oldest, current = comfyui_version(oldest_comfy_server), comfyui_version(comfy_server)
    assert Version(oldest) < Version(current)
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert re.search(r'^requires-comfyui = "(.*)"$', pyproject, re.M).group(1) == f">={oldest}"
    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    assert f"Needs ComfyUI {oldest} or newer (the tests run on {oldest} and {current})" in readme


# -- model files ---------------------------------------------------------------------------------------

def named_model_files(api: dict) -> list[tuple[str, str, str, str]]:
    """(file, folder, class_type, input) of every model-file input of an API prompt."""
    found = []
    for node in api.values():
        class_type = node["class_type"]
        for name, value in node["inputs"].items():
            if not isinstance(value, str) or (class_type, name) in NOT_CATALOGUED_INPUTS:
                continue
            if (class_type, name) in MODEL_FILE_INPUTS:
                if value not in NO_FILE_CHOICES:
                    found.append((value, MODEL_FILE_INPUTS[class_type, name], class_type, name))
            elif value.lower().endswith(MODEL_EXTENSIONS):
                pytest.fail(f"{class_type}.{name} = {value!r} looks like a model file: add the input to "
                            "MODEL_FILE_INPUTS")
    return found


@pytest.mark.parametrize("api_name", API_FILES)
def test_every_model_file_a_workflow_names_is_in_the_catalogue(api_name):
    from comfyui_diffbody.models.files import KNOWN_FILES

    named = named_model_files(load_workflow(api_name))
    assert named
    for filename, folder, class_type, name in named:
        known = KNOWN_FILES.get(filename)
        assert known is not None, f"{api_name}: {class_type}.{name} = {filename!r} is not in models/files.py"
        assert known.folder == folder, f"{filename}: catalogued in {known.folder}, {class_type} looks in {folder}"


@pytest.mark.parametrize("ui_name,api_name", PAIRS)
def test_notes_name_every_needed_model_file_and_its_folder(ui_name, api_name):
    from comfyui_diffbody.models.files import FOLDERS

    ui, api = load_workflow(ui_name), load_workflow(api_name)
    notes = "\n".join(node["widgets_values"][0] for node in ui["nodes"] if node["type"] in FRONTEND_ONLY_TYPES)
    backends = {node["inputs"]["backend"] for node in api.values() if node["class_type"] == "DiffBodyPoseEstimator"}
    needed = [(f, folder) for f, folder, class_type, name in named_model_files(api)
              if class_type != "DiffBodyPoseEstimator" or any(name in POSE_BACKEND_FILES[b] for b in backends)]
    for filename, folder in needed:
        line = next((line for line in notes.splitlines() if filename in line), None)
        assert line is not None, f"{ui_name}: no note names {filename}"
        assert f"{FOLDERS[folder].relative_dir}/" in line, f"{ui_name}: the note line naming {filename} has no folder"


@pytest.mark.parametrize("ui_name", UI_FILES)
def test_every_node_sits_in_a_titled_group_or_is_a_note(ui_name):
    ui = load_workflow(ui_name)
    grouped = {node["id"] for group in ui["groups"] for node in nodes_in_group(ui, group)}
    assert all(group["title"] for group in ui["groups"])
    loose = [node["id"] for node in ui["nodes"]
             if node["id"] not in grouped and node["type"] not in FRONTEND_ONLY_TYPES]
    assert loose == [], f"{ui_name}: nodes outside every group"
    members = [{node["id"] for node in nodes_in_group(ui, group)} for group in ui["groups"]]
    assert sum(len(m) for m in members) == len(set().union(*members)), f"{ui_name}: a node sits in two groups"


def test_stand_ins_replace_class_types_only():
    api = load_workflow("diffbody_full_api.json")
    prompt = with_test_stand_ins(api)
    for node_id, node in api.items():
        assert prompt[node_id]["inputs"] == node["inputs"]
        assert prompt[node_id]["class_type"] == TEST_SUBSTITUTES.get(node["class_type"], node["class_type"])
    assert copy.deepcopy(api) == load_workflow("diffbody_full_api.json"), "the original is left unchanged"


def test_server_lists_the_bundled_workflows_as_templates(comfy_server):
    templates = comfy_server.get("/workflow_templates")
    listed = set(templates.get("ComfyUI-DiffBody-main", []))
    assert {name[:-len(".json")] for name in UI_FILES} <= listed


def test_rerunning_stage_2_with_new_settings_leaves_no_model_behind(comfy_server):
    """Changing a stage-2 setting re-runs the colour adapter's apply node; ComfyUI must not find the
    adapter's weights alive after their ModelPatcher was dropped (it then logs a leak and runs a full
    garbage collection on every later load)."""
    prompt = runnable(load_workflow("diffbody_full_api.json"))
    apply_adapter = next(n for n in prompt.values() if n["class_type"] == "DiffBodyApplyColourAdapter")
    log_start = len(comfy_server.log())
    for weight in (0.9, 0.8, 0.7):
        apply_adapter["inputs"]["weight"] = weight
        entry = comfy_server.run(prompt, timeout=900)
        assert entry["status"]["status_str"] == "success", (execution_error(entry) or {}).get("exception_message")
    leaks = [line for line in comfy_server.log()[log_start:].splitlines() if "memory leak" in line]
    assert leaks == []


STAND_IN_CHECK = r'''
import json, os, sys
comfy_dir, tests_dir, models = sys.argv[1:4]
sys.path[:0] = [comfy_dir, tests_dir]
import torch
torch.set_num_threads(1)
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import folder_paths
for name in ("diffusers", "checkpoints", "clip_vision"):
    folder_paths.folder_names_and_paths[name] = ([os.path.join(models, name)], set())
import nodes
from comfy_test_nodes.native_stand_ins import CheckpointLoaderSimple
from comfyui_diffbody.models.sd21_components import load_sd21_components
from comfyui_diffbody.models.sdxl_components import load_sdxl_parts

text = "a person in a white shirt, arms crossed"
result = {}
_, clip, _ = CheckpointLoaderSimple().load_checkpoint("v2-1_512-ema-pruned.safetensors")
[[context, options]] = nodes.CLIPTextEncode().encode(clip, text)[0]
reference = load_sd21_components(os.path.join(models, "diffusers", "tiny-sd21")).text_encoder.encode([text])
result["sd21"] = (context - reference).abs().max().item()
model, clip, vae = CheckpointLoaderSimple().load_checkpoint("sd_xl_base_1.0.safetensors")
[[context, options]] = nodes.CLIPTextEncode().encode(clip, text)[0]
reference, pooled = load_sdxl_parts(os.path.join(models, "diffusers", "tiny-sdxl"))[2].encode([text])
result["sdxl"] = max((context - reference).abs().max().item(), (options["pooled_output"] - pooled).abs().max().item())
[[weighted, _]] = nodes.CLIPTextEncode().encode(clip, "a (person:1.4) in a white shirt, arms crossed")[0]
result["weights_change_it"] = not torch.equal(weighted, context)
latent = nodes.EmptyLatentImage().generate(64, 48, 1)[0]
positive = [[context, options]]
sampled = nodes.common_ksampler(model, 0, 2, 5.0, "euler", "normal", positive, positive, latent)[0]
result["decoded"] = list(nodes.VAEDecode().decode(vae, sampled)[0].shape)
print("RESULT " + json.dumps(result))
'''


def test_stand_in_clip_through_clip_text_encode_equals_the_pack_text_encoders(tiny_models_dir, tmp_path):
    """The stand-in checkpoint's CLIP, driven by ComfyUI's own CLIP Text Encode, gives exactly what the
    pack's diffusers text encoders give for the same tiny models; prompt weights work; its MODEL and VAE
    sample and decode through ComfyUI's KSampler and VAE Decode."""
    import subprocess

    from comfy_harness import comfyui_dir

    script = tmp_path / "stand_in_check.py"
    script.write_text(STAND_IN_CHECK)
    run = subprocess.run([sys.executable, str(script), str(comfyui_dir()), str(REPO_ROOT / "tests"),
                          str(tiny_models_dir)], capture_output=True, text=True, timeout=600)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["sd21"] == 0.0 and result["sdxl"] == 0.0
    assert result["weights_change_it"]
    assert result["decoded"] == [1, 48, 64, 3]
