"""The pack inside a real ComfyUI server: registration, model folders, a graph through POST /prompt,
and errors that reach the user without taking the server down."""

from __future__ import annotations

import pytest
from PIL import Image

from comfy_harness import ComfyServer, PromptRejected, execution_error, make_base_dir


def expected_interface(monkeypatch):
    """{node: (required input names, optional input names, return types)} from the classes themselves."""
    from comfyui_diffbody import NODE_CLASS_MAPPINGS
    from comfyui_diffbody.nodes import glue

    monkeypatch.setattr(glue, "list_files", lambda folder: [])
    monkeypatch.setattr(glue, "list_model_dirs", lambda folder: [])
    interface = {}
    for name, cls in NODE_CLASS_MAPPINGS.items():
        inputs = cls.INPUT_TYPES()
        interface[name] = (sorted(inputs.get("required", {})), sorted(inputs.get("optional", {})),
                           list(cls.RETURN_TYPES))
    return interface


def pack_import_problems(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if ("IMPORT FAILED" in line or "Cannot import" in line) and "DiffBody" in line]


def test_object_info_lists_every_node_with_its_interface(comfy_server, monkeypatch):
    info = comfy_server.object_info()
    for name, (required, optional, outputs) in expected_interface(monkeypatch).items():
        assert name in info, f"{name} missing from /object_info"
        node = info[name]
        assert sorted(node["input"].get("required", {})) == required, name
        assert sorted(node["input"].get("optional", {})) == optional, name
        assert node["output"] == outputs, name
        assert node["display_name"].startswith("DiffBody "), name
        assert node["category"].startswith("DiffBody/"), name
        assert node["description"], name
    assert pack_import_problems(comfy_server.log()) == []


def test_model_folders_are_registered(comfy_server):
    info = comfy_server.object_info()
    choices = info["DiffBodySwinIRLoader"]["input"]["required"]["model_name"][0]
    assert "general_swinir_v1.ckpt" in choices and "realesrgan_s4_swinir_100k.pth" in choices


def cleanup_graph(image: str, model: str = "general_swinir_v1.ckpt", upscale: float = 1.0) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "DiffBodySwinIRLoader", "inputs": {"model_name": model, "auto_download": False}},
        "3": {"class_type": "DiffBodySwinIRCleanup",
              "inputs": {"swinir": ["2", 0], "image": ["1", 0], "upscale": upscale, "tile_size": 512,
                         "tile_stride": 256}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "diffbody_test"}},
    }


def test_load_clean_save_graph_writes_the_image(comfy_server):
    entry = comfy_server.run(cleanup_graph("person.png", upscale=2.0))
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    [path] = comfy_server.output_files(entry)
    assert Image.open(path).size == (512, 512)


def test_rgba_17x9_input_is_cleaned_at_its_size(comfy_server):
    entry = comfy_server.run(cleanup_graph("tiny_rgba.png"))
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    [path] = comfy_server.output_files(entry)
    assert Image.open(path).size == (17, 9)


def test_missing_model_file_fails_with_where_to_put_it_and_server_keeps_serving(comfy_server, tiny_models_dir):
    # A known file the user has not downloaded: listed in the dropdown, so the graph validates.
    missing = tiny_models_dir / "upscale_models" / "realesrgan_s4_swinir_100k.pth"
    moved = missing.with_suffix(".moved")
    missing.rename(moved)
    try:
        entry = comfy_server.run(cleanup_graph("person.png", model="realesrgan_s4_swinir_100k.pth"))
    finally:
        moved.rename(missing)
    error = execution_error(entry)
    assert entry["status"]["status_str"] == "error" and error is not None
    assert "realesrgan_s4_swinir_100k.pth" in error["exception_message"]
    assert "upscale_models" in error["exception_message"]
    assert "huggingface.co/lxq007/DiffBIR-v2" in error["exception_message"]
    assert comfy_server.alive()
    assert comfy_server.run(cleanup_graph("person.png"))["status"]["status_str"] == "success"


def test_unknown_model_name_is_rejected_at_validation(comfy_server):
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.queue(cleanup_graph("person.png", model="no_such_file.ckpt"))
    assert "no_such_file.ckpt" in str(rejected.value)
    assert comfy_server.alive()


def test_other_folder_name_registers_the_same_nodes(comfy_server, tmp_path, tiny_models_dir):
    base = make_base_dir(tmp_path, "comfyui_diffbody", tiny_models_dir)
    other = ComfyServer(base).start()
    try:
        ours = sorted(n for n in other.object_info() if n.startswith("DiffBody"))
        log = other.log()
    finally:
        other.stop()
    assert ours == sorted(n for n in comfy_server.object_info() if n.startswith("DiffBody"))
    assert ours, "no DiffBody node registered"
    assert pack_import_problems(log) == []


def test_frontend_extension_is_served(comfy_server):
    import requests

    scripts = comfy_server.get("/extensions")
    ours = [s for s in scripts if s.endswith("/diffbody.js")]
    assert ours, scripts
    response = requests.get(comfy_server.url + ours[0], timeout=10)
    assert response.ok and "registerExtension" in response.text
