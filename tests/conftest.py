"""Shared fixtures: the tiny models folder and a real ComfyUI server with the pack installed (the current
version, and the oldest the pack claims: README, pyproject's requires-comfyui).

Server tests are marked `server` automatically (deselect them with `-m "not server"` for a quick run).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from comfy_harness import ComfyServer, make_base_dir, oldest_comfyui
from network_guard import sitecustomize as network_guard

SERVER_FIXTURES = {"comfy_server", "oldest_comfy_server", "each_comfy_server", "battery"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session", autouse=True)
def no_network():
    """The network guard (tests/network_guard) in the test process; servers get it from tests/comfy_harness.py."""
    network_guard.install()
    yield network_guard


@pytest.fixture(autouse=True)
def no_outbound_connection(no_network):
    """Fails a test that tried to reach anything but loopback, even where the code under test swallowed the
    refusal. A test that plants an attempt on purpose removes it from `no_network.attempts` itself."""
    before = len(no_network.attempts)
    yield
    made = no_network.attempts[before:]
    del no_network.attempts[before:]
    if made:
        pytest.fail("outbound network connections in a test:\n" + "\n".join(made), pytrace=False)


@pytest.fixture
def report_figure(request):
    """report_figure(line): print a measured figure and keep it for the run's summary (pytest hides what a
    passing test prints; the real-size tests' times and memory belong in the CI log)."""
    def report(line: str) -> None:
        print(line)
        request.node.user_properties.append(("figure", line))
    return report


def pytest_terminal_summary(terminalreporter):
    # a test's teardown report carries every property it recorded, in its call and in its fixtures' teardown
    lines = [value for reports in terminalreporter.stats.values() for report in reports
             if getattr(report, "when", None) == "teardown"
             for name, value in getattr(report, "user_properties", ()) if name == "figure"]
    if lines:
        terminalreporter.section("measured figures")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny-model tests: two OpenMP threads on two shared cores slow tiny models down ~100x
    when other jobs run, and one thread leaves fewer float-reduction orders for golden outputs to depend on."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory):
    """A ComfyUI-style models folder holding a tiny version of every model file the pack loads."""
    from comfyui_diffbody.testing.tiny import build_models_dir

    root = tmp_path_factory.mktemp("tiny-models")
    build_models_dir(str(root))
    return root


@pytest.fixture(scope="session")
def tiny_single_files(tiny_models_dir, tmp_path_factory):
    """tiny_models_dir's tiny SDXL and SD 2.1 folders as original single files, converted by ComfyUI's own
    converters in a subprocess, and ComfyUI's token ids of a few prompts (tests/single_files.py)."""
    from single_files import write_tiny_single_files

    return write_tiny_single_files(tiny_models_dir, tmp_path_factory.mktemp("single-files"))


def person_photo() -> np.ndarray:
    """scikit-image's bundled astronaut (a real photo of a person), HxWx3 uint8."""
    from skimage import data

    return data.astronaut()


def start_server(tmp_path_factory, tiny_models_dir, **options) -> ComfyServer:
    """A ComfyUI server with the pack linked in as `ComfyUI-DiffBody-main`, the tiny models and the test inputs."""
    base = make_base_dir(tmp_path_factory.mktemp("comfy"), "ComfyUI-DiffBody-main", tiny_models_dir)
    Image.fromarray(person_photo()).resize((256, 256)).save(base / "input" / "person.png")
    Image.fromarray(np.zeros((9, 17, 4), np.uint8)).save(base / "input" / "tiny_rgba.png")
    return ComfyServer(base, **options).start()


def stop_server(server: ComfyServer) -> None:
    server.stop()
    if os.environ.get("DIFFBODY_KEEP_SERVER_LOG"):
        print(server.log())
    refused = server.refused_connections()
    assert not refused, "the ComfyUI server tried to reach the network:\n" + "\n".join(refused)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, tiny_models_dir):
    """One ComfyUI server for the session (the current version, DIFFBODY_COMFYUI_DIR)."""
    server = start_server(tmp_path_factory, tiny_models_dir)
    yield server
    stop_server(server)


def oldest_comfyui_or_skip():
    """oldest_comfyui(), or skip the test where the environment was set up without it (failing in CI)."""
    oldest = oldest_comfyui()
    if oldest is None:
        reason = "DIFFBODY_COMFYUI_OLDEST_DIR is not set (scripts/test.sh sets it)"
        if os.environ.get("CI"):
            pytest.fail(f"the oldest supported ComfyUI must be tested in CI: {reason}")
        pytest.skip(reason)
    return oldest


@pytest.fixture(scope="module")
def oldest_comfy_server(tmp_path_factory, tiny_models_dir):
    """The oldest ComfyUI the pack claims (scripts/setup_env.sh's DIFFBODY_COMFYUI_OLDEST_DIR), in the same
    environment, for one module. Where the environment was set up without it: skipped, failing in CI."""
    comfy_dir, python_path = oldest_comfyui_or_skip()
    server = start_server(tmp_path_factory, tiny_models_dir, comfy_dir=comfy_dir, python_path=python_path)
    yield server
    stop_server(server)


@pytest.fixture(scope="module", params=["current", "oldest"])
def each_comfy_server(request):
    """comfy_server, then oldest_comfy_server: the tests that use it pass on both ends of the claimed range."""
    return request.getfixturevalue("comfy_server" if request.param == "current" else "oldest_comfy_server")
