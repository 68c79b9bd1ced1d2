"""The bad-input battery (issue 13): the bundled API workflows through one real ComfyUI server on tiny weights,
one thing changed per case (tests/battery_cases.py), each case recorded as ok / refused / clear error /
raw internal / crash or hang, and the table printed in the run's 'measured figures' section.

It fails on a crash or hang, a raw internal error for any of these (foreseeable) inputs, a marker file
created by unpickling a model file, a refused network connection, a prompt after an interrupt that does not
succeed, and loaded models or live tensor bytes after ten runs that differ from those after the first.
"""

from __future__ import annotations

import os
import time

import pytest

from battery_cases import (WORKFLOWS, Case, base_prompt, case_graph, classify_error, mirror_models_dir, nodes_of,
                           run_case, table, widget_values, write_battery_images, write_model_file_cases)
from comfy_harness import ComfyServer, make_base_dir

pytestmark = pytest.mark.battery

FULL, PRIORS, PUBLIC = WORKFLOWS
# Each pack node's widgets are tried in one workflow that holds it (the apply node in both stage-2 modes).
WIDGET_WORKFLOWS = {
    "DiffBodySwinIRLoader": (PRIORS,), "DiffBodySwinIRCleanup": (PRIORS,), "DiffBodyPoseEstimator": (PRIORS,),
    "DiffBodyLlavaCaption": (PRIORS,), "DiffBodyStage1Loader": (FULL,), "DiffBodyStage1Sampler": (FULL,),
    "DiffBodyMultiPriorControlNetLoader": (FULL,), "DiffBodyApplyMultiPriorControlNet": (FULL, PUBLIC),
    "DiffBodyColourAdapterLoader": (PUBLIC,), "DiffBodyApplyColourAdapter": (FULL,),
    "DiffBodyDepthNormalEstimator": (PUBLIC,), "DiffBodyBeforeAfter": (FULL,),
}
# Maximum values that would run for many minutes on the CPU: interrupted at the node's first progress event
# (the interrupt cases' check that the next prompt succeeds covers them).
LONG_AT_MAX = {("DiffBodyStage1Sampler", "steps")}
CASES: list[Case] = []
RAN: set[str] = set()


@pytest.fixture(scope="module")
def battery(tmp_path_factory, tiny_models_dir):
    """One server for the whole battery, on a models folder mirroring the tiny one plus the bad model files."""
    models = tmp_path_factory.mktemp("battery-models")
    mirror_models_dir(tiny_models_dir, models)
    marker = tmp_path_factory.mktemp("battery-marker") / "code_from_a_model_file_ran"
    bad_files = write_model_file_cases(models, marker, tiny_models_dir)
    base = make_base_dir(tmp_path_factory.mktemp("battery-comfy"), "ComfyUI-DiffBody-main", models)
    from battery_cases import person_rgb

    person_rgb(256, 256).save(base / "input" / "person.png")
    images = write_battery_images(base / "input")
    server = ComfyServer(base).start()
    started = time.monotonic()
    yield {"server": server, "images": images, "marker": marker, "bad_files": bad_files,
           "object_info": server.object_info()}
    server.stop()
    refused = server.refused_connections()
    assert not refused, refused
    print(f"battery: {len(CASES)} cases in {time.monotonic() - started:.0f} s")


def _run_all(battery, cases: list[Case]) -> list[Case]:
    server = battery["server"]
    dump = os.environ.get("DIFFBODY_BATTERY_DUMP")  # a file to append each case's line to as it finishes
    for case in cases:
        CASES.append(run_case(server, case))
        if dump:
            with open(dump, "a", encoding="utf-8") as f:
                f.write(table([case])[1] + "\n")
        assert not battery["marker"].exists(), f"{case.name}: code from a model file ran"
    return cases


def _assert_no_failures(cases: list[Case]) -> None:
    bad = [f"{c.workflow} {c.name}: {c.outcome}: {c.message}" for c in cases if c.outcome in ("raw internal", "crash/hang")]
    assert not bad, "\n".join(bad)


def test_classifier_sorts_raw_internals_from_clear_errors():
    assert classify_error("ZeroDivisionError", "division by zero") == "raw internal"
    assert classify_error("RuntimeError", "The size of tensor a (3) must match the size of tensor b (4)") \
        == "raw internal"
    assert classify_error("IndexError", "list index out of range") == "raw internal"
    assert classify_error("RuntimeError", "mat1 and mat2 shapes cannot be multiplied (1x3 and 4x5)") == "raw internal"
    assert classify_error("custom_nodes.pack.pipelines.image.BadImage",
                          "DiffBody: the image is 1x1 px; stage 2 needs at least 64 px a side: use a larger photo") \
        == "clear error"


def test_a_planted_raw_error_is_caught_through_the_server(battery):
    prompt = {"load": {"class_type": "LoadImage", "inputs": {"image": "person.png"}},
              "raise": {"class_type": "TestOnlyRaiseZeroDivision", "inputs": {"image": ["load", 0]}},
              "show": {"class_type": "PreviewImage", "inputs": {"images": ["raise", 0]}}}
    [case] = [run_case(battery["server"], Case("planted", "-", "planted ZeroDivisionError", prompt))]
    assert case.outcome == "raw internal", (case.outcome, case.message)


def test_a_planted_outbound_connection_is_refused_in_both_processes(battery, no_network):
    import socket

    before = len(no_network.attempts)
    with pytest.raises(no_network.OutboundConnectionRefused), socket.create_connection(("203.0.113.7", 80), 2):
        pass
    assert len(no_network.attempts) == before + 1
    del no_network.attempts[before:]  # planted on purpose
    with socket.create_connection(("127.0.0.1", battery["server"].port), 5):
        pass  # loopback stays allowed

    server = battery["server"]
    entry = server.run({"net": {"class_type": "TestOnlyOutboundConnection", "inputs": {"attempt": 1}}}, timeout=60)
    assert entry["status"]["status_str"] == "success"
    assert "network guard" in entry["outputs"]["net"]["text"][0]
    refused = server.refused_connections(clear=True)
    assert len(refused) == 1 and "203.0.113.7" in refused[0], refused


def test_images_through_load_image(battery):
    """Each image through the three workflows in a row: priors, then full (its stage 1 is the one priors just
    ran, cached), then public (its stage 0 is cached)."""
    cases = [Case("image", workflow, image, base_prompt(workflow, image), timeout=600)
             for image in battery["images"] for workflow in (PRIORS, FULL, PUBLIC)]
    _run_all(battery, cases)
    RAN.add("images")
    _assert_no_failures(cases)


def widget_cases(object_info: dict, bad_files: dict) -> list[Case]:
    bad_names = {name for names in bad_files.values() for name in names}
    cases = []
    for class_type, workflows in WIDGET_WORKFLOWS.items():
        for workflow in workflows:
            prompt = base_prompt(workflow)
            [node_id] = nodes_of(prompt, class_type)[:1]
            graph = case_graph(prompt, node_id, object_info)
            spec = object_info[class_type]["input"]
            for name, input_spec in {**spec["required"], **spec.get("optional", {})}.items():
                for label, value in widget_values(input_spec):
                    changed = {k: {**v, "inputs": dict(v["inputs"])} for k, v in graph.items()}
                    changed[node_id]["inputs"][name] = value
                    long_run = (class_type, name) in LONG_AT_MAX and label.startswith("max")
                    group = "model file" if any(bad in str(value) for bad in bad_names) else "widget"
                    cases.append(Case(group, workflow, f"{class_type.replace('DiffBody', '')}.{name} {label}", changed,
                                      interrupt_node=node_id if long_run else None))
    return cases


def test_every_widget_of_every_pack_node(battery):
    cases = _run_all(battery, widget_cases(battery["object_info"], battery["bad_files"]))
    RAN.add("widgets")
    _assert_no_failures(cases)
    assert not battery["marker"].exists()
    model_cases = [c for c in cases if c.group == "model file"]
    assert len(model_cases) >= 20 and all(c.outcome != "ok" for c in model_cases), \
        [(c.name, c.outcome) for c in model_cases if c.outcome == "ok"]


def test_battery_table(battery, report_figure):
    """Prints the table; fails when the battery is short of its 150 cases over the three workflows."""
    expected = {"images", "widgets"}
    if not expected <= RAN:
        pytest.skip("run the whole module for the battery's table")
    for line in table(CASES):
        report_figure(line)
    assert len(CASES) >= 150 and {c.workflow for c in CASES} >= set(WORKFLOWS)
