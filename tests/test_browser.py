"""Every UI workflow in the real ComfyUI frontend, driven by headless Chromium.

For each UI workflow (workflows/*.json not ending _api.json, and tests/workflows/ for our own):
load it into the page, check that every node type is known and no dialog opened, convert it with the
frontend's own graphToPrompt and compare with the bundled `<name>_api.json`, queue it (native loaders
swapped for the test-only stand-ins) and see it finish; where it has a DiffBody Before/After node, check
the comparison view (both images loaded, the split follows a drag, no stock preview under it) and save
screenshots under $DIFFBODY_ARTIFACTS_DIR/browser (or the pytest base temp folder). Also: a DiffBody node's
help page opened from the node library (js/docs/, tests/test_node_docs.py), and the README's screenshots of
the bundled public-weights workflow and its before/after view (rewritten into js/docs/images/ with
DIFFBODY_UPDATE_SCREENSHOTS=1).

Needs Debian's /usr/bin/chromium (apt-get install chromium) and PyPI playwright (requirements-dev.txt;
never `playwright install`). Without them the tests skip locally and fail in CI (env CI set).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_harness import execution_error
from conftest import person_photo
from workflow_tools import TEST_SUBSTITUTES, WORKFLOWS_DIR

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OWN_WORKFLOWS_DIR = Path(__file__).resolve().parent / "workflows"
COMPARE_NODE = "DiffBodyBeforeAfter"
COMPARE_EXTENSION = "DiffBody.BeforeAfter"
PAGE_TIMEOUT_MS = 180_000
RUN_TIMEOUT_S = 1200
# As tests/test_workflows.py does: every `steps` input set to 2 for the CPU run (the bundled 200 are the
# paper's DDPM setting); everything else runs as bundled.
TEST_STEPS = 2


def ui_workflows() -> list[Path]:
    """Collected at import time, so whatever workflows exist now are tested."""
    found = [p for folder in (WORKFLOWS_DIR, OWN_WORKFLOWS_DIR) for p in sorted(folder.glob("*.json"))]
    return [p for p in found if not p.name.endswith("_api.json")]


def browser_unavailable() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"no {CHROMIUM} (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (requirements-dev.txt)"
    return None


@pytest.fixture(scope="session")
def playwright_runtime():
    reason = browser_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests must run in CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    runtime = sync_playwright().start()
    yield runtime
    runtime.stop()


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory):
    root = os.environ.get("DIFFBODY_ARTIFACTS_DIR")
    path = (Path(root).resolve() if root else tmp_path_factory.getbasetemp()) / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


def set_setting(server, name: str, value) -> None:
    import requests

    requests.post(f"{server.url}/settings/{name}", json=value, timeout=30).raise_for_status()


class FrontendPage:
    """The ComfyUI frontend in a fresh Chromium profile, recording what our extension and our images do
    wrong (the frontend's own noise, e.g. 404s for user.css, is not ours to judge)."""

    def __init__(self, runtime, server, profile_dir: Path):
        self.server = server
        self.pack_problems: list[str] = []
        self.context = runtime.chromium.launch_persistent_context(
            str(profile_dir), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000})
        # Only the local server: no update checks or registry look-ups, in CI or not.
        self.context.route(lambda url: not url.startswith(server.url), lambda route: route.abort())
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.page.set_default_timeout(PAGE_TIMEOUT_MS)
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self._note("uncaught", f"{error}\n{error.stack or ''}"))
        self.page.on("requestfailed", lambda request: self._is_local(request.url)
                     and self._note("request failed", request.url))
        self.page.on("response", lambda response: response.status >= 400 and self._is_local(response.url)
                     and self._note(f"HTTP {response.status}", response.url))

    def _is_local(self, url: str) -> bool:
        # The frontend asks the registry (blocked above) about each custom node type: not our failure.
        return url.startswith(self.server.url)

    def _on_console(self, message):
        url = message.location.get("url", "")
        if message.type == "error" and (not url or self._is_local(url)):
            self._note("console error", f"{message.text} @ {url}")

    def _note(self, kind: str, text: str):
        if "diffbody" in text.lower():
            self.pack_problems.append(f"{kind}: {text}")

    def open(self):
        self.page.goto(self.server.url, wait_until="domcontentloaded")
        # !!: wait_for_function would call a class it gets back.
        self.page.wait_for_function(
            "(t) => !!(window.app?.graph && window.LiteGraph?.registered_node_types?.[t])", arg=COMPARE_NODE)
        self.page.wait_for_function("(n) => !!window.app.extensions?.some((e) => e.name === n)",
                                    arg=COMPARE_EXTENSION)
        return self

    def evaluate(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def open_dialogs(self) -> list[str]:
        return self.evaluate("""() => [...document.querySelectorAll('.p-dialog, [role="dialog"], [role="alertdialog"]')]
            .filter((d) => d.offsetParent !== null || d.getClientRects().length)
            .map((d) => d.innerText.trim().slice(0, 500))""")

    def close(self):
        self.context.close()


@pytest.fixture
def frontend(playwright_runtime, comfy_server, tmp_path):
    set_setting(comfy_server, "Comfy.TutorialCompleted", True)  # keeps the template browser shut
    # The tiny test models carry other file names than a workflow's model list: that warning is about
    # this test set-up. Missing *nodes* still open a dialog, and are checked on their own as well.
    set_setting(comfy_server, "Comfy.Workflow.ShowMissingModelsWarning", False)
    page = FrontendPage(playwright_runtime, comfy_server, tmp_path / "chromium-profile")
    yield page
    page.close()


# -- helpers ---------------------------------------------------------------------------------------

def declared_inputs(object_info: dict, class_type: str) -> set[str]:
    spec = object_info[class_type]["input"]
    return set(spec.get("required", {})) | set(spec.get("optional", {}))


def comparable(prompt: dict, object_info: dict) -> dict:
    """{id: (class_type, inputs)} with links as [id, slot], keeping the inputs the node declares: the
    server ignores others (the stock PreviewAny's frontend sends its display widget, `preview`)."""
    result = {}
    for node_id, node in prompt.items():
        known = declared_inputs(object_info, node["class_type"])
        inputs = {name: [str(value[0]), value[1]] if isinstance(value, list) and len(value) == 2
                  and isinstance(value[1], int) else value
                  for name, value in node["inputs"].items() if name in known}
        result[str(node_id)] = (node["class_type"], inputs)
    return result


def provide_input_images(server, api_prompt: dict) -> None:
    """Files the workflow's Load Image nodes name (e.g. example.png), written as the person photo."""
    for node in api_prompt.values():
        name = node["inputs"].get("image") if node["class_type"] == "LoadImage" else None
        if isinstance(name, str) and not (server.base_dir / "input" / name).exists():
            Image.fromarray(person_photo()).resize((256, 256)).save(server.base_dir / "input" / name)


def workflow_node_types(workflow: dict) -> set[str]:
    subgraphs = workflow.get("definitions", {}).get("subgraphs", [])
    subgraph_ids = {s["id"] for s in subgraphs}
    nodes = workflow["nodes"] + [n for s in subgraphs for n in s.get("nodes", [])]
    return {n["type"] for n in nodes} - subgraph_ids


def queue_from_page(frontend: FrontendPage) -> str:
    """graphToPrompt, stand-ins swapped and steps shortened in the page, then the frontend's own
    api.queuePrompt."""
    result = frontend.evaluate("""async ([substitutes, steps]) => {
        const prompt = await app.graphToPrompt();
        for (const node of Object.values(prompt.output)) {
            node.class_type = substitutes[node.class_type] ?? node.class_type;
            if (typeof node.inputs.steps === "number") node.inputs.steps = steps;
        }
        try {
            return { prompt_id: (await app.api.queuePrompt(0, prompt)).prompt_id };
        } catch (error) {
            return { error: error.response ?? String(error) };
        }
    }""", [TEST_SUBSTITUTES, TEST_STEPS])
    assert "error" not in result, f"the server refused the prompt:\n{json.dumps(result['error'], indent=1)[:4000]}"
    return result["prompt_id"]


def image_of(png: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)


def check_comparison_view(frontend: FrontendPage, node_id: str, pair_count: int, shots: Path) -> None:
    page = frontend.page
    view = f'.diffbody-compare[data-test-node="{node_id}"]'
    state = frontend.evaluate("""(id) => {
        const node = app.graph.getNodeById(id);
        const widgets = (node.widgets ?? []).filter((w) => w.name === "diffbody_compare");
        if (widgets.length === 1) widgets[0].element.dataset.testNode = String(id);
        // At scale 1, centred: DOM widgets are hidden when zoomed far out.
        app.canvas.ds.scale = 1;
        app.canvas.centerOnNode(node);
        app.canvas.setDirty(true, true);
        return { widgets: widgets.length, registrations: app.extensions.filter((e) => e.name === "DiffBody.BeforeAfter").length };
    }""", node_id)
    assert state == {"widgets": 1, "registrations": 1}, state
    page.wait_for_function("""(sel) => { const el = document.querySelector(sel);
        return !!el && ["true", "error"].includes(el.dataset.loaded) && el.getBoundingClientRect().width > 100; }""",
                           arg=view)
    images = frontend.evaluate("""(sel) => { const el = document.querySelector(sel);
        return { loaded: el.dataset.loaded, count: Number(el.dataset.count),
                 images: [...el.querySelectorAll("img")].map((i) => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]) }; }""",
                               view)
    assert images["loaded"] == "true", images
    assert images["count"] == pair_count, images
    assert all(complete and width > 0 for _, complete, width, _ in images["images"]), images
    [(_, _, *before_size), (_, _, *after_size)] = sorted(images["images"], key=lambda i: i[0])
    assert before_size == after_size, "before is resized to after's size, so the two line up under the split"

    # No stock preview beside ours: give the canvas a few frames to add one if it were going to.
    frontend.evaluate("() => new Promise((done) => { app.canvas.draw(true, true); setTimeout(done, 500); })")
    stock = frontend.evaluate("""(id) => { const node = app.graph.getNodeById(id);
        // Nodes 2.0 draws output images as <img> in the node's body: only our two may be there.
        const body = document.querySelector(`[data-testid="node-body-${id}"]`);
        const foreign = body ? [...body.querySelectorAll("img")].filter((i) => !i.closest(".diffbody-compare")) : [];
        return { imgs: node.imgs?.length ?? 0, foreignImgs: foreign.length,
                 previewWidgets: (node.widgets ?? []).filter((w) => w.name.startsWith("$$")).map((w) => w.name) }; }""",
                              node_id)
    assert stock == {"imgs": 0, "foreignImgs": 0, "previewWidgets": []}, \
        f"a stock preview duplicates the comparison: {stock}"

    frame = page.locator(f"{view} .diffbody-compare-frame")
    box = frame.bounding_box()
    assert box and box["width"] > 50 and box["height"] > 50, box

    def drag_to(fraction: float) -> float:
        y = box["y"] + box["height"] * 0.6
        page.mouse.move(box["x"] + box["width"] * 0.5, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * fraction, y, steps=8)
        page.mouse.up()
        return float(page.locator(view).get_attribute("data-split"))

    assert drag_to(0.2) == pytest.approx(0.2, abs=0.02)
    left_split = image_of(frame.screenshot())
    assert drag_to(0.8) == pytest.approx(0.8, abs=0.02)
    right_split = image_of(frame.screenshot())
    width = left_split.shape[1]
    # Left of both splits the before image shows both times; between them, before replaced after.
    unchanged = np.abs(left_split[:, : int(width * 0.15)] - right_split[:, : int(width * 0.15)]).mean()
    changed = np.abs(left_split[:, int(width * 0.3): int(width * 0.7)] - right_split[:, int(width * 0.3): int(width * 0.7)]).mean()
    assert unchanged < 0.5 and changed > 2.0, (unchanged, changed)

    if pair_count > 1:
        page.locator(f"{view} .diffbody-compare-next").click()
        page.wait_for_function("""(sel) => { const el = document.querySelector(sel);
            return el.dataset.index === "1" && el.dataset.loaded === "true"; }""", arg=view)

    page.screenshot(path=str(shots / f"node{node_id}-page.png"))
    page.locator(view).screenshot(path=str(shots / f"node{node_id}-compare.png"))


def run_and_check(frontend: FrontendPage, workflow_path: Path, api_prompt: dict, artifacts_dir: Path, capsys):
    """Queue the loaded graph from the page, wait for it, and check every comparison view."""
    prompt_id = queue_from_page(frontend)
    try:
        entry = frontend.server.wait(prompt_id, timeout=RUN_TIMEOUT_S)
    except BaseException:
        frontend.server.interrupt()  # the session's server stays free for the tests after this one
        raise
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    assert frontend.open_dialogs() == [], "a dialog opened while running the workflow"

    compare_ids = [node_id for node_id, node in api_prompt.items() if node["class_type"] == COMPARE_NODE]
    if compare_ids:
        shots = artifacts_dir / re.sub(r"[^\w.-]", "_", workflow_path.stem)
        if frontend.evaluate("() => !!LiteGraph.vueNodesMode"):
            shots = shots.with_name(shots.name + "-nodes2")
        shots.mkdir(parents=True, exist_ok=True)
        for node_id in compare_ids:
            pairs = entry["outputs"][node_id]["diffbody_compare"]
            check_comparison_view(frontend, node_id, len(pairs), shots)
        with capsys.disabled():
            print(f"\n[browser] {workflow_path.name}: screenshots in {shots}")
    assert frontend.pack_problems == [], "\n".join(frontend.pack_problems)


# -- the tests -------------------------------------------------------------------------------------

@pytest.mark.timeout(RUN_TIMEOUT_S + 600)
@pytest.mark.parametrize("workflow_path", ui_workflows(), ids=lambda p: p.name)
def test_ui_workflow_in_the_frontend(workflow_path, frontend, comfy_server, artifacts_dir, capsys):
    api_path = workflow_path.parent / "api" / (workflow_path.stem + "_api.json")
    assert api_path.is_file(), f"{workflow_path.name} has no API-format twin {api_path.name}"
    workflow = json.loads(workflow_path.read_text())
    api_prompt = json.loads(api_path.read_text())
    provide_input_images(comfy_server, api_prompt)
    frontend.open()
    assert frontend.evaluate("() => LiteGraph.vueNodesMode") is False, "the default renderer is the LiteGraph canvas"

    known = set(frontend.evaluate("() => Object.keys(LiteGraph.registered_node_types)"))
    assert sorted(workflow_node_types(workflow) - known) == [], "node types the frontend does not know"
    frontend.evaluate("async (workflow) => { await app.loadGraphData(workflow); }", workflow)
    frontend.page.wait_for_timeout(1000)  # dialogs open asynchronously after loading
    assert frontend.open_dialogs() == [], "a dialog opened on loading the workflow"

    object_info = comfy_server.object_info()
    output = frontend.evaluate("async () => (await app.graphToPrompt()).output")
    assert comparable(output, object_info) == comparable(api_prompt, object_info), \
        f"the frontend's conversion of {workflow_path.name} differs from {api_path.name}"

    run_and_check(frontend, workflow_path, api_prompt, artifacts_dir, capsys)


def test_comparison_view_in_nodes_2_0(frontend, comfy_server, artifacts_dir, capsys):
    """The default renderer of frontend 1.32.9 is the LiteGraph canvas (Comfy.VueNodes.Enabled is off
    by default; the test above runs there). Users who switch Nodes 2.0 on get the same view."""
    workflow_path = OWN_WORKFLOWS_DIR / "compare_small.json"
    api_prompt = json.loads((OWN_WORKFLOWS_DIR / "api" / "compare_small_api.json").read_text())
    provide_input_images(comfy_server, api_prompt)
    set_setting(comfy_server, "Comfy.VueNodes.Enabled", True)
    try:
        frontend.open()
        assert frontend.evaluate("() => LiteGraph.vueNodesMode") is True
        frontend.evaluate("async (workflow) => { await app.loadGraphData(workflow); }",
                          json.loads(workflow_path.read_text()))
        run_and_check(frontend, workflow_path, api_prompt, artifacts_dir, capsys)
    finally:
        set_setting(comfy_server, "Comfy.VueNodes.Enabled", False)  # the server keeps settings for later tests


# -- node help and the README's screenshots --------------------------------------------------------------

HELP_NODE = "DiffBodyPoseEstimator"
DOCS_IMAGES = Path(__file__).resolve().parents[1] / "js" / "docs" / "images"
# The README and the Before/After help page show these; DIFFBODY_UPDATE_SCREENSHOTS=1 rewrites them from
# the test below (otherwise they go to the artifacts folder only, and the committed ones are checked to exist).
SCREENSHOTS = {"workflow": "workflow_public_fast.png", "viewer": "before_after_viewer.png"}
SCREENSHOT_WORKFLOW = WORKFLOWS_DIR / "diffbody_public_fast.json"


def test_node_library_help_shows_the_pack_page(frontend, comfy_server, artifacts_dir):
    """Node Library > search > a DiffBody node's (?) button: the frontend fetches js/docs/<NodeName>.md from
    /extensions/<pack folder>/docs/ and shows it, its picture loaded from beside it."""
    frontend.open()
    page = frontend.page
    display_name = comfy_server.object_info()[HELP_NODE]["display_name"]
    page.locator('.side-bar-button[aria-label^="Node Library"]').first.click()
    page.locator(".node-lib-search-box input").first.fill(display_name)
    leaf = page.locator(".node-lib-node-container", has_text=display_name).first
    leaf.hover()
    leaf.locator(".help-button").click()
    content = page.locator(".node-help-content .markdown-content")
    content.wait_for(timeout=60_000)  # without our page the frontend shows its fallback instead
    page.wait_for_function("""(el) => [...el.querySelectorAll("img")].some((i) => i.complete && i.naturalWidth > 0)""",
                           arg=content.element_handle())
    shown = frontend.evaluate("""() => { const el = document.querySelector(".node-help-content .markdown-content");
        return { text: el.innerText, images: [...el.querySelectorAll("img")].map((i) => [i.src, i.naturalWidth]) }; }""")
    page_source = (Path(__file__).resolve().parents[1] / "js" / "docs" / f"{HELP_NODE}.md").read_text()
    first_paragraph = page_source.split("\n\n")[1].split("\n")[0]
    assert first_paragraph in shown["text"], shown["text"][:1000]
    assert "pose_image" in shown["text"] and "keypoints" in shown["text"]
    [(src, width)] = shown["images"]
    assert re.search(r"/extensions/[^/]+/docs/images/pose_astronaut\.png$", src) and width > 0, shown["images"]
    page.screenshot(path=str(artifacts_dir / "node_help.png"))
    # The frontend asks for docs/<NodeName>/<locale>.md first and falls back to docs/<NodeName>.md on a 404:
    # that 404 is its design (the pack ships one language), not a fault.
    locale_first = f"/docs/{HELP_NODE}/en.md"
    problems = [p for p in frontend.pack_problems if not p.rstrip().endswith(locale_first)]
    assert problems == [], "\n".join(problems)


def save_screenshot(png: bytes, name: str, artifacts_dir: Path) -> None:
    (artifacts_dir / name).write_bytes(png)
    if os.environ.get("DIFFBODY_UPDATE_SCREENSHOTS"):
        import io

        image = Image.open(io.BytesIO(png)).convert("RGB")
        image.save(DOCS_IMAGES / name, optimize=True)


@pytest.mark.timeout(RUN_TIMEOUT_S + 600)
def test_screenshots_of_the_workflow_and_the_viewer(frontend, comfy_server, artifacts_dir):
    """The bundled public-weights workflow, fitted to the window, and its before/after view after a run on
    the tiny test weights (the right side shows what random tiny weights make, as the captions say)."""
    api_prompt = json.loads((WORKFLOWS_DIR / "api" / "diffbody_public_fast_api.json").read_text())
    provide_input_images(comfy_server, api_prompt)
    # For a readable picture: node text drawn at any zoom, no minimap, no Nodes 2.0 banner.
    set_setting(comfy_server, "LiteGraph.Canvas.MinFontSizeForLOD", 0)
    set_setting(comfy_server, "Comfy.Minimap.Visible", False)
    frontend.context.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
    try:
        frontend.open()
    finally:  # the server keeps settings for later tests
        set_setting(comfy_server, "LiteGraph.Canvas.MinFontSizeForLOD", 8)
        set_setting(comfy_server, "Comfy.Minimap.Visible", True)
    page = frontend.page
    frontend.evaluate("async (workflow) => { await app.loadGraphData(workflow); }",
                      json.loads(SCREENSHOT_WORKFLOW.read_text()))
    page.set_viewport_size({"width": 2400, "height": 1300})  # fitted, the whole graph at a legible zoom
    frontend.evaluate("async () => { await app.extensionManager.command.execute('Comfy.Canvas.FitView'); }")
    page.wait_for_timeout(1500)  # the fit animates
    save_screenshot(page.screenshot(), SCREENSHOTS["workflow"], artifacts_dir)
    page.set_viewport_size({"width": 1600, "height": 1000})

    prompt_id = queue_from_page(frontend)
    entry = comfy_server.wait(prompt_id, timeout=RUN_TIMEOUT_S)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    [node_id] = [i for i, node in api_prompt.items() if node["class_type"] == COMPARE_NODE]
    check_comparison_view(frontend, node_id, 1, artifacts_dir)  # leaves the split at 0.8
    view = page.locator(f'.diffbody-compare[data-test-node="{node_id}"]')
    box = view.locator(".diffbody-compare-frame").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.6)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.6, steps=8)
    page.mouse.up()
    assert float(view.get_attribute("data-split")) == pytest.approx(0.5, abs=0.02)
    save_screenshot(view.screenshot(), SCREENSHOTS["viewer"], artifacts_dir)
    for name in SCREENSHOTS.values():
        assert Image.open(DOCS_IMAGES / name).size[0] > 200, name
    assert frontend.pack_problems == [], "\n".join(frontend.pack_problems)
