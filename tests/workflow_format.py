"""The two workflow formats, read independently of scripts/build_workflows.py (which writes them):
UI -> API conversion with a server's /object_info, a strict comparison of API graphs, and structural
checks of a UI (LiteGraph) workflow.

UI format, as ComfyUI's frontend 1.3x saves it: `nodes` (id, type, inputs [{name, type, link, widget?}],
outputs [{name, type, links}], widgets_values, title, mode), `links` ([id, from node, from slot, to node,
to slot, type]), `groups`. The frontend turns it into an API prompt (graphToPrompt) by walking each
node's widgets in order (the node's required, then optional widget inputs in /object_info order, plus
the widgets the frontend adds itself: "control after generate" after seed-like INTs and flagged
combos, the upload button after image-upload combos), replacing a widget's value by its link when its
input is connected, and leaving out frontend-only nodes (notes) and muted/bypassed ones. A saved node
lists its socket inputs, then the widget inputs that have a link (checked against frontend 1.32.9 in
chromium: its graphToPrompt gives the same prompts as these functions, except that JavaScript writes
1.0 as 1 and that it adds PreviewAny's display-only "preview" widget, which the server ignores).
"""

from __future__ import annotations

FRONTEND_ONLY_TYPES = {"Note", "MarkdownNote"}
WIDGET_INPUT_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
ADDED_AFTER_SEEDS = ("seed", "noise_seed")
OPTIONAL_SHAPE = 7  # LiteGraph's slot shape for an optional input


class WorkflowFormatError(ValueError):
    pass


def _options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _type_of(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def is_widget(spec) -> bool:
    return _type_of(spec) in WIDGET_INPUT_TYPES and not _options(spec).get("forceInput")


def frontend_widgets(class_type: str, object_info: dict) -> list[tuple[str, str | None]]:
    """(widget name, input name or None for a frontend-added widget) in the frontend's widget order."""
    info = object_info[class_type]
    widgets = []
    for section in ("required", "optional"):
        for name in info.get("input_order", {}).get(section, list(info["input"].get(section, {}))):
            spec = info["input"][section][name]
            if not is_widget(spec):
                continue
            widgets.append((name, name))
            options, kind = _options(spec), _type_of(spec)
            control = options.get("control_after_generate")
            if kind == "INT" and (control if control is not None else name in ADDED_AFTER_SEEDS):
                widgets.append(("control_after_generate", None))
            elif kind == "COMBO" and control:
                widgets.append(("control_after_generate", None))
            elif kind == "COMBO" and options.get("image_upload"):
                widgets.append(("upload", None))
            elif kind == "COMBO" and any(options.get(k) for k in ("video_upload", "audio_upload",
                                                                   "animated_image_upload")):
                raise WorkflowFormatError(f"{class_type}.{name}: upload widgets other than images are not modelled")
    return widgets


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """The API prompt the frontend would send for this UI workflow (strict: a widget count, an input or
    a node type that does not fit /object_info raises)."""
    links = {link[0]: link for link in ui["links"]}
    nodes = {node["id"]: node for node in ui["nodes"]}
    prompt = {}
    for node in ui["nodes"]:
        class_type = node["type"]
        if class_type in FRONTEND_ONLY_TYPES:
            continue
        if node.get("mode", 0) != 0:
            raise WorkflowFormatError(f"node {node['id']} is muted or bypassed: bundled workflows run every node")
        if class_type not in object_info:
            raise WorkflowFormatError(f"node {node['id']}: the server has no node type {class_type!r}")
        info = object_info[class_type]
        widgets = frontend_widgets(class_type, object_info)
        values = node.get("widgets_values", [])
        if len(values) != len(widgets):
            raise WorkflowFormatError(f"node {node['id']} ({class_type}): {len(values)} widgets_values for the "
                                      f"widgets {[w for w, _ in widgets]}")
        inputs = {input_name: value for (_, input_name), value in zip(widgets, values) if input_name}
        declared = {name for section in ("required", "optional") for name in info["input"].get(section, {})}
        for entry in node.get("inputs", []):
            if entry["name"] not in declared:
                raise WorkflowFormatError(f"node {node['id']} ({class_type}) has no input {entry['name']!r}")
            link_id = entry.get("link")
            if link_id is None:
                continue
            _, source, slot, target, target_slot, _ = links[link_id]
            if target != node["id"] or node["inputs"][target_slot] is not entry:
                raise WorkflowFormatError(f"link {link_id} does not end at node {node['id']}'s {entry['name']}")
            if nodes[source]["type"] in FRONTEND_ONLY_TYPES:
                raise WorkflowFormatError(f"link {link_id} starts at a note")
            inputs[entry["name"]] = [str(source), slot]
        for name in info["input"].get("required", {}):
            if name not in inputs:
                raise WorkflowFormatError(f"node {node['id']} ({class_type}): required input {name!r} is not set")
        title = node.get("title") or info["display_name"]
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}
    return prompt


def api_differences(expected: dict, actual: dict) -> list[str]:
    """Every difference between two API prompts: node ids, class types, titles, each input's value or
    link (values compared with their JSON types, so 1 != 1.0 != True)."""
    problems = []
    for node_id in sorted(set(expected) | set(actual)):
        if node_id not in actual:
            problems.append(f"node {node_id} missing")
            continue
        if node_id not in expected:
            problems.append(f"node {node_id} unexpected")
            continue
        want, got = expected[node_id], actual[node_id]
        if want["class_type"] != got["class_type"]:
            problems.append(f"node {node_id}: class_type {got['class_type']!r} != {want['class_type']!r}")
        if want.get("_meta", {}).get("title") != got.get("_meta", {}).get("title"):
            problems.append(f"node {node_id}: title {got.get('_meta')} != {want.get('_meta')}")
        for name in sorted(set(want["inputs"]) | set(got["inputs"])):
            a, b = want["inputs"].get(name, "<absent>"), got["inputs"].get(name, "<absent>")
            if not _same_json(a, b):
                problems.append(f"node {node_id} ({want['class_type']}).{name}: {b!r} != {a!r}")
    return problems


def _same_json(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    return a == b


def ui_structure_problems(ui: dict, object_info: dict) -> list[str]:
    """Links, slots and types that do not agree with each other or with /object_info; ids; groups."""
    problems = []
    nodes = {node["id"]: node for node in ui["nodes"]}
    if len(nodes) != len(ui["nodes"]):
        problems.append("duplicate node ids")
    link_ids = [link[0] for link in ui["links"]]
    if len(set(link_ids)) != len(link_ids):
        problems.append("duplicate link ids")
    if ui.get("last_node_id", -1) < max(nodes) or ui.get("last_link_id", -1) < max(link_ids, default=0):
        problems.append("last_node_id / last_link_id below the ids in use")
    for link_id, source, slot, target, target_slot, kind in ui["links"]:
        if source not in nodes or target not in nodes:
            problems.append(f"link {link_id}: unknown node")
            continue
        output, entry = nodes[source]["outputs"][slot], nodes[target]["inputs"][target_slot]
        if link_id not in (output.get("links") or []):
            problems.append(f"link {link_id} not listed on node {source}'s output {slot}")
        if entry.get("link") != link_id:
            problems.append(f"link {link_id} not set on node {target}'s input {entry['name']}")
        if output["type"] != kind or entry["type"] not in (kind, "*"):
            problems.append(f"link {link_id}: type {kind} from {output['type']} into {entry['type']}")
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY_TYPES:
            continue
        info = object_info[node["type"]]
        expected_outputs = list(zip(info["output_name"], info["output"]))
        if [(o["name"], o["type"]) for o in node["outputs"]] != expected_outputs:
            problems.append(f"node {node['id']}: outputs {node['outputs']} != {expected_outputs}")
        for entry in node["inputs"]:
            section = "required" if entry["name"] in info["input"].get("required", {}) else "optional"
            spec = info["input"].get(section, {}).get(entry["name"])
            if spec is None:
                continue  # reported by ui_to_api
            if is_widget(spec) != ("widget" in entry):
                problems.append(f"node {node['id']}.{entry['name']}: widget marker does not match /object_info")
            if not is_widget(spec) and entry["type"] != _type_of(spec):
                problems.append(f"node {node['id']}.{entry['name']}: type {entry['type']} != {_type_of(spec)}")
            if "widget" in entry and entry.get("link") is None:
                problems.append(f"node {node['id']}.{entry['name']}: unlinked widget listed as an input")
        kinds = ["widget" in e for e in node["inputs"]]
        if kinds != sorted(kinds):
            problems.append(f"node {node['id']}: widget inputs before socket inputs (the frontend saves sockets first)")
        sockets = [name for section in ("required", "optional")
                   for name in info.get("input_order", {}).get(section, [])
                   if not is_widget(info["input"][section][name])]
        if [e["name"] for e in node["inputs"] if "widget" not in e] != sockets:
            problems.append(f"node {node['id']}: socket inputs {[e['name'] for e in node['inputs']]} != {sockets}")
    for group in ui.get("groups", []):
        x, y, w, h = group["bounding"]
        if w <= 0 or h <= 0:
            problems.append(f"group {group['title']!r}: empty bounding")
    return problems


def nodes_in_group(ui: dict, group: dict) -> list[dict]:
    """Nodes whose whole box (title bar included) lies inside the group, as LiteGraph decides membership."""
    x, y, w, h = group["bounding"]
    inside = []
    for node in ui["nodes"]:
        (nx, ny), (nw, nh) = node["pos"], node["size"]
        if x <= nx and nx + nw <= x + w and y <= ny - 30 and ny + nh <= y + h:
            inside.append(node)
    return inside
