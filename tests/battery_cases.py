"""The bad-input battery's cases as data, its runner and its classifier (tests/test_battery.py drives them).

Each case is one prompt: a bundled API workflow (test stand-ins for ComfyUI's native loaders, every `steps`
input at 1) with one thing changed. Outcomes:
- ok: the prompt ran;
- refused: POST /prompt answered with a validation error (nothing ran);
- clear error: the run stopped with an error that is not on the raw-internal list;
- raw internal: an error from deep inside (RAW_TYPES / RAW_TEXTS), not a sentence about the input;
- crash/hang: the server died, stopped answering, or the prompt did not finish within its timeout.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from comfy_harness import ComfyServer, ExecutingListener, PromptRejected, execution_error
from workflow_tools import load_workflow, with_test_stand_ins

WORKFLOWS = ("diffbody_full_api.json", "diffbody_priors_api.json", "diffbody_public_api.json")
OUTCOMES = ("ok", "refused", "clear error", "raw internal", "crash/hang")

# Raw internal errors: what Python and torch raise from deep inside, which tell a user nothing about their input.
RAW_TYPES = frozenset({"ZeroDivisionError", "IndexError", "KeyError", "AttributeError", "TypeError", "NameError",
                       "UnboundLocalError", "AssertionError", "RecursionError", "StopIteration"})
RAW_TEXTS = ("division by zero", "size of tensor", "sizes of tensors must match", "must match the size",
             "mat1 and mat2", "shapes cannot be multiplied", "out of range", "out of bounds",
             "invalid for input of size", "expected size", "calculated padded input size",
             "kernel size can't be greater", "negative dimension", "values to unpack", "cannot reshape",
             "input and output sizes should be greater than 0", "output size is too small", "given groups",
             "padding size should be less than", "unexpected keyword argument", "object has no attribute",
             "is not subscriptable", "unsupported operand", "nonetype", "non-empty", "zero-size", "cannot be empty",
             "stack expects each tensor")


@dataclass
class Case:
    group: str  # image / widget / model file / load / planted
    workflow: str
    name: str
    prompt: dict
    timeout: float = 300.0
    interrupt_node: str | None = None  # interrupt at this node's first progress event
    outcome: str = ""
    message: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def classify_error(exception_type: str, message: str) -> str:
    """'raw internal' or 'clear error' for an execution error's type (module.Class) and message."""
    name = exception_type.rsplit(".", 1)[-1]
    text = message.lower()
    if name in RAW_TYPES or any(raw in text for raw in RAW_TEXTS):
        return "raw internal"
    return "clear error"


def first_line(text: str, width: int = 150) -> str:
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= width else line[:width - 3] + "..."


def server_answers(server: ComfyServer) -> bool:
    try:
        server.get("/system_stats", timeout=20)
        return True
    except Exception:  # noqa: BLE001 - any failure to answer counts as a crash
        return False


def _rejection_message(body: dict) -> str:
    errors = [f"{node.get('class_type')}: {err.get('message')}: {err.get('details')}"
              for node in body.get("node_errors", {}).values() for err in node.get("errors", [])]
    return first_line("; ".join(errors) or (body.get("error") or {}).get("message", json.dumps(body)))


def run_case(server: ComfyServer, case: Case) -> Case:
    started = time.monotonic()
    interrupted = {}

    def on_progress(data):
        if case.interrupt_node and data.get("node") == case.interrupt_node and not interrupted:
            interrupted["at"] = (data.get("value"), data.get("max"))
            server.interrupt()

    try:
        with ExecutingListener(server, on_progress=on_progress):
            try:
                prompt_id = server.queue(case.prompt)
            except PromptRejected as rejected:
                case.outcome, case.message = "refused", _rejection_message(rejected.body)
                return case
            return finish_case(server, case, prompt_id, interrupted)
    finally:
        case.seconds = round(time.monotonic() - started, 1)


def finish_case(server: ComfyServer, case: Case, prompt_id: str, interrupted: dict | None = None) -> Case:
    """Wait for a queued case and record its outcome."""
    try:
        entry = server.wait(prompt_id, timeout=case.timeout)
    except TimeoutError as error:
        server.interrupt()
        case.outcome, case.message = "crash/hang", f"hang: {error}"
        return case
    except RuntimeError as error:
        case.outcome, case.message = "crash/hang", first_line(str(error))
        return case
    case.extra["interrupted_at"] = (interrupted or {}).get("at")
    _record(case, entry, server)
    return case


def _record(case: Case, entry: dict, server: ComfyServer) -> None:
    messages = [kind for kind, _ in entry.get("status", {}).get("messages", [])]
    error = execution_error(entry)
    if not server_answers(server):
        case.outcome, case.message = "crash/hang", "the server stopped answering after the case"
    elif entry["status"].get("status_str") == "success":
        case.outcome = "ok"
    elif "execution_interrupted" in messages:
        case.outcome, case.message = "ok", "interrupted as asked"
        case.extra["interrupted"] = True
    elif error is not None:
        case.outcome = classify_error(error.get("exception_type", ""), error.get("exception_message", ""))
        case.message = f"{error.get('node_type')}: {first_line(error.get('exception_message', ''))}"
        case.extra["exception_type"] = error.get("exception_type")
    else:
        case.outcome, case.message = "crash/hang", f"no result and no error: {messages}"


# -- prompts ------------------------------------------------------------------------------------------------

def base_prompt(workflow: str, image: str = "person.png", *, native_size: bool = False) -> dict:
    """A bundled workflow as the battery runs it: test stand-ins, every `steps` at 1 and every caption at 8 tokens
    (what tiny weights need to run fast; the widget cases try each at its extremes), Load Image on `image`,
    LLaVA's keep_loaded off everywhere (so the three workflows' shared nodes have the same inputs and the
    server's cache carries stage 0 and stage 1 from one workflow's run to the next).

    native_size: stages 1 and 2 at the small test photo's own size rather than on the 512-px bucket canvas
    (the widget cases run the same graph a hundred times; the image cases keep the shipped buckets)."""
    prompt = with_test_stand_ins(load_workflow(workflow))
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = image
        if "keep_loaded" in node["inputs"]:
            node["inputs"]["keep_loaded"] = False
        if isinstance(node["inputs"].get("steps"), int):
            node["inputs"]["steps"] = 1
        if isinstance(node["inputs"].get("max_new_tokens"), int):  # random tiny LLaVA talks until the limit
            node["inputs"]["max_new_tokens"] = 8
        if native_size and node["inputs"].get("size_mode") == "bucket":
            node["inputs"]["size_mode"] = "native"
    return prompt


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]


def ancestors(prompt: dict, node_id: str) -> set[str]:
    found, todo = set(), [node_id]
    while todo:
        for value in prompt[todo.pop()]["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and value[0] in prompt and value[0] not in found:
                found.add(value[0])
                todo.append(value[0])
    return found


def descendants(prompt: dict, node_id: str) -> set[str]:
    return {other for other in prompt if node_id in ancestors(prompt, other)}


# Outputs whose effect only shows once something samples with them (the colour adapter's file is read against
# the MODEL it is applied to): the case keeps everything downstream.
SAMPLED_TYPES = {"CONDITIONING", "MODEL", "DIFFBODY_COLOUR_ADAPTER"}


def case_graph(prompt: dict, node_id: str, object_info: dict) -> dict:
    """The part of `prompt` one widget case of `node_id` needs: the node, what feeds it and a preview of each
    output (or, for CONDITIONING/MODEL outputs, everything downstream up to the output nodes). Upstream nodes
    are cached by the server, so a case costs only its node and what follows it."""
    info = object_info[prompt[node_id]["class_type"]]
    outputs = info["output"]
    if info["output_node"] or not (set(outputs) & SAMPLED_TYPES):
        keep = ancestors(prompt, node_id) | {node_id}
        graph = {k: copy.deepcopy(v) for k, v in prompt.items() if k in keep}
        for index, kind in enumerate(outputs):
            sink = ("PreviewImage", "images") if kind == "IMAGE" else ("PreviewAny", "source")
            graph[f"battery_sink_{index}"] = {"class_type": sink[0], "inputs": {sink[1]: [node_id, index]}}
        return graph
    keep = {node_id}
    for other in descendants(prompt, node_id):
        if object_info[prompt[other]["class_type"]]["output_node"]:
            keep |= {other} | ancestors(prompt, other)
    return {k: copy.deepcopy(v) for k, v in prompt.items() if k in keep | ancestors(prompt, node_id)}


def widget_values(spec: list) -> list[tuple[str, object]]:
    """(label, value) for one widget input of /object_info: min and max, every option, both booleans, and
    empty / 20,000-character / odd-unicode-with-NUL strings. Inputs that are links give none."""
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        return [(f"= {choice}", choice) for choice in choices]
    if kind in ("INT", "FLOAT"):
        return [(f"min {options['min']}", options["min"]), (f"max {options['max']}", options["max"])]
    if kind == "BOOLEAN":
        return [("= false", False), ("= true", True)]
    if kind == "STRING":
        return [("empty", ""), ("20,000 characters", "person " * 2857 + "x"),
                ("odd unicode with NUL", "a\x00b \u202e\u0301\U0001F9D1\u200d\U0001F9B0 \ufffd\u00ff\u4e2d")]
    return []


# -- inputs ------------------------------------------------------------------------------------------------

def person_rgb(width: int, height: int) -> Image.Image:
    from conftest import person_photo

    return Image.fromarray(person_photo()).resize((width, height))


SIZE_CASES = ("size_1x1.png", "size_17x9.png", "size_8x2048.png", "size_2048x8.png", "size_3000x2000.jpg")


def write_battery_images(folder: Path) -> list[str]:
    """The image cases, written into ComfyUI's input folder; returns their file names (the sizes, SIZE_CASES,
    and the formats)."""
    person = person_rgb(256, 256)
    grey = np.asarray(person.convert("L"))
    images = {
        "size_1x1.png": Image.new("RGB", (1, 1), (128, 90, 70)),
        "size_17x9.png": person.resize((17, 9)),
        "size_8x2048.png": person.resize((8, 2048)),
        "size_2048x8.png": person.resize((2048, 8)),
        "size_3000x2000.jpg": person.resize((3000, 2000)),
        "grey_8bit.png": Image.fromarray(grey),
        "grey_16bit.png": Image.fromarray(grey.astype(np.uint16) * 257),
        "palette.png": person.quantize(64),
        "cmyk.jpg": person.convert("CMYK"),
        "rgba.png": Image.fromarray(np.dstack([np.asarray(person), np.full((256, 256), 128, np.uint8)])),
        "all_black.png": Image.new("RGB", (256, 256)),
    }
    for name, image in images.items():
        image.save(folder / name)
    rotated = person_rgb(192, 256).rotate(90, expand=True)  # stored lying down, EXIF says: turn it upright
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(folder / "exif_rotated.jpg", exif=exif)
    frames = [person.rotate(angle) for angle in (0, 10, 20)]
    frames[0].save(folder / "three_frames.gif", save_all=True, append_images=frames[1:])
    buffer = io.BytesIO()
    person.save(buffer, format="PNG")
    (folder / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return sorted([*images, "exif_rotated.jpg", "three_frames.gif", "truncated.png"])


class MarkerPayload:
    """Unpickling this creates `path`: the proof that a loader ran code from a model file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_model_file_cases(models: Path, marker: Path, tiny: Path) -> dict[str, list[str]]:
    """Bad files beside the tiny ones in each pack loader's folder: a file of the wrong network, a truncated
    safetensors, and .ckpt/.pth/.bin pickles whose loading would create `marker`. Returns folder -> names."""
    import shutil

    import torch

    written: dict[str, list[str]] = {}
    wrong = {"upscale_models": tiny / "diffbody" / "pose" / "body_pose_model.pth",
             "diffbody": tiny / "ipadapter" / "ip-adapter-plus_sdxl_vit-h.safetensors",
             "ipadapter": tiny / "diffbody" / "diffbody_stage1_controlnet.safetensors",
             "diffbody/pose": tiny / "upscale_models" / "general_swinir_v1.ckpt"}
    truncated_source = tiny / "diffbody" / "diffbody_stage1_unet.safetensors"
    for folder, source in wrong.items():
        target = models / folder
        names = [f"zz_wrong_network{source.suffix}", "zz_truncated.safetensors",
                 "zz_marker.ckpt", "zz_marker.pth", "zz_marker.bin"]
        shutil.copyfile(source, target / names[0])
        data = truncated_source.read_bytes()
        (target / names[1]).write_bytes(data[: len(data) // 3])
        for name in names[2:4]:
            torch.save({"state_dict": MarkerPayload(str(marker))}, target / name)
        with open(target / names[4], "wb") as f:
            pickle.dump({"weight": MarkerPayload(str(marker))}, f)
        written[folder] = names
    for folder, wrong_dir in (("LLM", tiny / "diffbody" / "priors" / "tiny-depth-anything"),
                              ("diffbody/priors", tiny / "LLM" / "llava-1.5-7b-hf")):
        shutil.copytree(wrong_dir, models / folder / "zz_wrong_network", symlinks=True)
        pickled = models / folder / "zz_pickled_only"
        shutil.copytree(wrong_dir if folder == "diffbody/priors" else tiny / "LLM" / "llava-1.5-7b-hf", pickled,
                        ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
        with open(pickled / "pytorch_model.bin", "wb") as f:
            pickle.dump({"weight": MarkerPayload(str(marker))}, f)
        written[folder] = ["zz_wrong_network", "zz_pickled_only"]
    return written


def mirror_models_dir(tiny: Path, target: Path) -> None:
    """`target`: real folders mirroring `tiny`, every file a symlink, so the battery can add bad files beside the
    tiny ones without touching the session's shared models folder."""
    for source in sorted(tiny.rglob("*")):
        destination = target / source.relative_to(tiny)
        if source.is_dir() and not source.is_symlink():
            destination.mkdir(parents=True, exist_ok=True)
        else:
            destination.symlink_to(source)


def table(cases: list[Case]) -> list[str]:
    """The battery's report: one line per case, then counts per workflow and outcome."""
    lines = [f"{'group':<11} {'workflow':<16} {'case':<62} {'outcome':<12} {'s':>6}  message"]
    for case in cases:
        lines.append(f"{case.group:<11} {case.workflow.replace('_api.json', ''):<16} {case.name[:62]:<62} "
                     f"{case.outcome:<12} {case.seconds:>6.1f}  {case.message}")
    lines.append("")
    workflows = sorted({case.workflow for case in cases})
    lines.append(f"{'totals':<22}" + "".join(f"{outcome:>14}" for outcome in OUTCOMES) + f"{'cases':>8}")
    for workflow in [*workflows, "all"]:
        mine = [c for c in cases if workflow in ("all", c.workflow)]
        lines.append(f"{workflow.replace('_api.json', ''):<22}"
                     + "".join(f"{sum(c.outcome == o for c in mine):>14}" for o in OUTCOMES) + f"{len(mine):>8}")
    return lines
