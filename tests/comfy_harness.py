"""A real ComfyUI server for the tests: built from the registry (scripts/setup_env.sh), started on a
free loopback port with this pack linked into custom_nodes/, and stopped by its own PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]


def comfyui_dir() -> Path:
    """The extracted ComfyUI, building the environment first if this process was not started by
    scripts/test.sh (which exports DIFFBODY_COMFYUI_DIR)."""
    known = os.environ.get("DIFFBODY_COMFYUI_DIR")
    if not known:
        exports = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "setup_env.sh"), "--exports"],
                                 check=True, capture_output=True, text=True).stdout
        for item in exports.replace("export ", "").split():
            name, _, value = item.partition("=")
            os.environ[name] = value
        known = os.environ["DIFFBODY_COMFYUI_DIR"]
    path = Path(known)
    if not (path / "main.py").is_file():
        raise RuntimeError(f"no ComfyUI at {path}")
    return path


def oldest_comfyui() -> tuple[Path, str] | None:
    """The oldest ComfyUI the pack claims (scripts/setup_env.sh exports DIFFBODY_COMFYUI_OLDEST_DIR) and the
    PYTHONPATH entries it runs with in the same environment, or None where the environment was set up by hand
    without it."""
    comfyui_dir()  # runs scripts/setup_env.sh when this process was not started by scripts/test.sh
    known = os.environ.get("DIFFBODY_COMFYUI_OLDEST_DIR")
    if not known:
        return None
    path = Path(known)
    if not (path / "main.py").is_file():
        raise RuntimeError(f"no ComfyUI at {path}")
    return path, os.environ.get("DIFFBODY_COMFYUI_OLDEST_PYTHONPATH", "")


def run_comfy_script(code: str, work: Path, *args: str, label: str = "measured") -> dict:
    """Run `code` in a fresh Python process as `script COMFYUI_DIR *args` (ComfyUI's own modules on its
    path there, never in the test process) and return the JSON of its last `RESULT {...}` line."""
    script = work / "check.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script), str(comfyui_dir()), *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"{label}:", json.dumps(result))
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TEST_NODES = Path(__file__).resolve().parent / "comfy_test_nodes"
# Its sitecustomize.py refuses and records every non-loopback connection in the server process.
NETWORK_GUARD = Path(__file__).resolve().parent / "network_guard"


def make_base_dir(base: Path, pack_folder_name: str, models_dir: Path | None = None) -> Path:
    """A ComfyUI --base-directory: custom_nodes/<pack_folder_name> -> this repo, the test-only nodes
    (tests/comfy_test_nodes), models/, input/, output/."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    for name, target in ((pack_folder_name, REPO_ROOT), ("diffbody_test_only_nodes", TEST_NODES)):
        link = base / "custom_nodes" / name
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    if models_dir is not None:
        if not (base / "models").exists():
            (base / "models").symlink_to(models_dir, target_is_directory=True)
    else:
        (base / "models").mkdir(exist_ok=True)
    for sub in ("input", "output", "temp", "user"):
        (base / sub).mkdir(exist_ok=True)
    return base


class ComfyServer:
    """`extra_args`: more ComfyUI command-line options; `comfy_dir` None: the ComfyUI of comfyui_dir();
    `python_path`: entries put before the inherited PYTHONPATH (what oldest_comfyui() returns with its folder);
    `cpu` False: ComfyUI picks its device (the GPU suite, bench/gpu_suite.py); the tests run it with --cpu."""

    def __init__(self, base_dir: Path, *, python: str = sys.executable, startup_timeout: float = 180.0,
                 extra_args: tuple[str, ...] = (), comfy_dir: Path | None = None, python_path: str = "",
                 cpu: bool = True):
        self.base_dir = base_dir
        self.cpu = cpu
        self.extra_args = tuple(extra_args)
        self.comfy_dir = comfy_dir
        self.python_path = python_path
        self.python = python
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base_dir / "comfyui.log"
        self.network_log = base_dir / "network_guard.log"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> "ComfyServer":
        comfy = self.comfy_dir or comfyui_dir()
        cmd = [self.python, str(comfy / "main.py"), *(["--cpu"] if self.cpu else []), "--listen", "127.0.0.1",
               "--port", str(self.port), "--base-directory", str(self.base_dir), "--database-url",
               "sqlite:///:memory:", "--disable-auto-launch", *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   DO_NOT_TRACK="1", DIFFBODY_NETWORK_GUARD_LOG=str(self.network_log))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETWORK_GUARD), self.python_path, env.get("PYTHONPATH")]))
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(cmd, cwd=comfy, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode} during start-up:\n{self.log()[-4000:]}")
            try:
                if requests.get(f"{self.url}/system_stats", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {self.startup_timeout:.0f} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        """Stop exactly the process we started (and its children), never anything else."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def peak_rss_gib(self) -> float:
        """The server process's peak resident memory so far (Linux VmHWM), GiB."""
        with open(f"/proc/{self.process.pid}/status", encoding="utf-8") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        return kib / 2 ** 20

    def refused_connections(self, clear: bool = False) -> list[str]:
        """What the network guard refused in the server process so far (one line each); `clear` empties it."""
        lines = self.network_log.read_text().splitlines() if self.network_log.exists() else []
        if clear:
            self.network_log.write_text("")
        return lines

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- API ----------------------------------------------------------------------------------
    def get(self, path: str, **kw):
        response = requests.get(f"{self.url}{path}", timeout=kw.pop("timeout", 30), **kw)
        response.raise_for_status()
        return response.json()

    def object_info(self) -> dict:
        return self.get("/object_info")

    def submit(self, prompt: dict) -> requests.Response:
        return requests.post(f"{self.url}/prompt", json={"prompt": prompt, "client_id": self.client_id}, timeout=30)

    def queue(self, prompt: dict) -> str:
        response = self.submit(prompt)
        if response.status_code != 200:
            raise PromptRejected(response.json())
        return response.json()["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """The history entry of a finished prompt (successful or not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") in ("success", "error") or entry["status"]["completed"]:
                    return entry
            if not self.alive():
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log()[-4000:]}")
            time.sleep(0.3)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def run(self, prompt: dict, timeout: float = 300.0) -> dict:
        return self.wait(self.queue(prompt), timeout)

    def run_timed(self, prompt: dict, timeout: float = 300.0) -> tuple[dict, dict[str, float]]:
        """Run a prompt; (history entry, {node id: seconds}) from the server's websocket 'executing' messages
        (a node runs from its message to the next one; cached nodes send none)."""
        with ExecutingListener(self) as listener:
            entry = self.run(prompt, timeout)
        return entry, listener.durations(entry["prompt"][1])

    def interrupt(self) -> None:
        requests.post(f"{self.url}/interrupt", timeout=10).raise_for_status()

    def run_single_image(self, prompt: dict, timeout: float = 600.0):
        """Run a prompt that saves exactly one image; that image as an (H, W, C) uint8 array."""
        import numpy as np
        from PIL import Image

        entry = self.run(prompt, timeout=timeout)
        assert entry["status"]["status_str"] == "success", (execution_error(entry) or {}).get("exception_message")
        [path] = self.output_files(entry)
        return np.asarray(Image.open(path))

    def output_files(self, entry: dict) -> list[Path]:
        """Image files a finished prompt wrote, as paths on disk."""
        files = []
        for node_output in entry.get("outputs", {}).values():
            for image in node_output.get("images", []):
                folder = self.base_dir / image.get("type", "output") / image.get("subfolder", "")
                files.append(folder / image["filename"])
        return files


class ExecutingListener:
    """Collects (monotonic time, node id) of 'executing' messages and (prompt id, node id) of 'progress' messages
    from the websocket of our client id, in a background thread."""

    def __init__(self, server: ComfyServer, on_progress=None):
        self.url = f"ws://127.0.0.1:{server.port}/ws?clientId={server.client_id}"
        self.events: list[tuple[float, str | None, str]] = []
        self.progress: list[tuple[str | None, str | None]] = []  # (prompt id, node id) of each 'progress' message
        self.on_progress = on_progress  # called in the listener thread with each 'progress' message's data
        self._connected, self._stop = threading.Event(), threading.Event()

    def __enter__(self) -> "ExecutingListener":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)
        self._thread.start()
        if not self._connected.wait(30):
            raise RuntimeError(f"no websocket connection to {self.url}")
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.5)  # the last 'executing' (node None) may trail the history entry
        self._stop.set()
        self._thread.join(10)

    async def _listen(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(self.url) as ws:
            self._connected.set()
            while not self._stop.is_set():
                try:
                    message = await ws.receive(timeout=0.2)
                except asyncio.TimeoutError:
                    continue
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                body = json.loads(message.data)
                if body.get("type") == "executing":
                    data = body["data"]
                    self.events.append((time.monotonic(), data.get("node"), data.get("prompt_id")))
                elif body.get("type") == "progress":
                    data = body["data"]
                    self.progress.append((data.get("prompt_id"), data.get("node")))
                    if self.on_progress is not None:
                        self.on_progress(data)

    def durations(self, prompt_id: str) -> dict[str, float]:
        events = [(t, node) for t, node, pid in self.events if pid == prompt_id]
        return {node: round(end - start, 2) for (start, node), (end, _) in zip(events, events[1:]) if node}


class PromptRejected(Exception):
    def __init__(self, body: dict):
        super().__init__(json.dumps(body, indent=1)[:4000])
        self.body = body


def execution_error(entry: dict) -> dict | None:
    """The `execution_error` message of a failed prompt, if any."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None


def cleanup_base_dir(base: Path) -> None:
    shutil.rmtree(base, ignore_errors=True)
