"""Restore a photo through a running ComfyUI's HTTP API, with the Python standard library only.

    python examples/api_client.py photo.jpg
    python examples/api_client.py photo.jpg --server http://127.0.0.1:8188 \\
        --workflow workflows/api/diffbody_public_fast_api.json --out restored/

What it does, as any API client would:
1. uploads the photo (POST /upload/image) into ComfyUI's input folder;
2. sets it into the workflow's one Load Image node (an API-format workflow, `workflows/api/*_api.json`);
3. queues the workflow (POST /prompt, with this client's client_id);
4. follows the run over the websocket (/ws?clientId=...): node by node, step progress, errors;
5. downloads (GET /view) every saved result, and the before/after pair of each DiffBody Before/After
   node, into --out, and prints their paths.

Python has no websocket client in its standard library; the ~60 lines of `WebSocket` below speak just
enough of RFC 6455 for this: one handshake, text frames in, pings answered, binary frames (live
previews) skipped. Any websocket library would do the same job.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import os
import socket
import struct
import sys
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

DEFAULT_WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "api" / "diffbody_public_fast_api.json"


class WebSocket:
    """A minimal RFC 6455 client: text messages from the server, nothing sent but pongs and a close."""

    def __init__(self, url: str, timeout: float):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "ws":
            raise ValueError(f"only ws:// is supported here, got {url}")
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        self.buffer = b""
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        if not head.startswith("HTTP/1.1 101"):
            raise ConnectionError(f"websocket handshake refused: {head.splitlines()[0]}")

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(marker, 1)
        return head

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the websocket")
        self.buffer += chunk

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _send(self, opcode: int, payload: bytes) -> None:
        # Client frames are masked (RFC 6455 5.3); only short control frames are ever sent.
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def receive_text(self) -> str:
        """The next whole text message (fragments joined); binary messages are skipped."""
        message, kind = b"", None
        while True:
            first, second = self._read(2)
            fin, opcode, length = first & 0x80, first & 0x0F, second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(length)  # server frames are not masked
            if opcode == 0x8:
                raise ConnectionError("the server closed the websocket")
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            if opcode in (0x1, 0x2):
                message, kind = payload, opcode
            elif opcode == 0x0:
                message += payload
            if fin and kind is not None and opcode in (0x0, 0x1, 0x2):
                if kind == 0x1:
                    return message.decode("utf-8")
                message, kind = b"", None

    def close(self) -> None:
        try:
            self._send(0x8, struct.pack(">H", 1000))
        finally:
            self.sock.close()


def http_json(server: str, path: str, body: bytes | None = None, content_type: str = "application/json"):
    request = urllib.request.Request(server + path, data=body,
                                     headers={"Content-Type": content_type} if body is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise SystemExit(f"{path}: HTTP {error.code}: {error.read().decode(errors='replace')[:3000]}") from None


def upload_image(server: str, photo: Path) -> str:
    """POST /upload/image; returns the name Load Image takes ("subfolder/name" where there is one)."""
    boundary = uuid.uuid4().hex
    kind = mimetypes.guess_type(photo.name)[0] or "application/octet-stream"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{photo.name}\"\r\n"
            f"Content-Type: {kind}\r\n\r\n").encode() + photo.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    answer = http_json(server, "/upload/image", body, f"multipart/form-data; boundary={boundary}")
    return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]


def set_input_image(workflow: dict, image_name: str) -> None:
    loaders = [node for node in workflow.values() if node["class_type"] == "LoadImage"]
    if len(loaders) != 1:
        raise SystemExit(f"the workflow must have exactly one LoadImage node, it has {len(loaders)}")
    loaders[0]["inputs"]["image"] = image_name


def follow(ws: WebSocket, prompt_id: str, titles: dict) -> None:
    """Print the run's progress until it ends; stop with the server's message if it fails."""
    while True:
        event = json.loads(ws.receive_text())
        data = event.get("data", {})
        if data.get("prompt_id") not in (None, prompt_id):
            continue  # another client's run
        if event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return  # the end of the run (every ComfyUI version sends this)
        if event["type"] == "executing":
            print(f"running {titles.get(data['node'], data['node'])}", flush=True)
        elif event["type"] == "progress":
            print(f"  step {data['value']}/{data['max']}", flush=True)
        elif event["type"] == "execution_error":
            raise SystemExit(f"the run failed in node {data.get('node_id')} ({data.get('node_type')}): "
                             f"{data.get('exception_message', '').strip()}")
        elif event["type"] == "execution_interrupted":
            raise SystemExit("the run was interrupted")


def download(server: str, entry: dict, target: Path) -> Path:
    query = urllib.parse.urlencode({k: entry[k] for k in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{server}/view?{query}", timeout=60) as response:
        target.write_bytes(response.read())
    return target


def fetch_outputs(server: str, prompt_id: str, out: Path) -> list[Path]:
    """Saved results (type "output") and every before/after pair, from GET /history/<prompt_id>."""
    outputs = http_json(server, f"/history/{prompt_id}")[prompt_id]["outputs"]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for node_id, output in outputs.items():
        for entry in output.get("images", []):
            if entry["type"] == "output":
                written.append(download(server, entry, out / entry["filename"]))
        for index, pair in enumerate(output.get("diffbody_compare", [])):
            for side in ("before", "after"):
                written.append(download(server, pair[side], out / f"node{node_id}_{index}_{side}.png"))
    return written


def run(server: str, photo: Path, workflow: dict, out: Path, timeout: float) -> list[Path]:
    client_id = uuid.uuid4().hex
    set_input_image(workflow, upload_image(server, photo))
    titles = {node_id: node.get("_meta", {}).get("title", node["class_type"]) for node_id, node in workflow.items()}
    # Listen before queueing, so no message of this run is missed.
    ws = WebSocket(server.replace("http://", "ws://", 1) + f"/ws?clientId={client_id}", timeout)
    try:
        body = json.dumps({"prompt": workflow, "client_id": client_id}).encode()
        answer = http_json(server, "/prompt", body)
        prompt_id = answer["prompt_id"]
        if answer.get("node_errors"):
            # ComfyUI queues the outputs that passed validation and reports the others: not what was asked.
            request = urllib.request.Request(server + "/queue", json.dumps({"delete": [prompt_id]}).encode(),
                                             headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=60).close()
            raise SystemExit("the server refused nodes of the workflow:\n" + json.dumps(answer["node_errors"], indent=1))
        print(f"queued {prompt_id}", flush=True)
        follow(ws, prompt_id, titles)
    finally:
        ws.close()
    return fetch_outputs(server, prompt_id, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", type=Path, help="the photo to restore")
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI's address")
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW, help="an API-format workflow")
    parser.add_argument("--out", type=Path, default=Path("diffbody-output"), help="folder for the downloads")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for a websocket message")
    args = parser.parse_args()
    workflow = json.loads(args.workflow.read_text(encoding="utf-8"))
    for path in run(args.server.rstrip("/"), args.photo, workflow, args.out, args.timeout):
        print(f"saved {path}")


if __name__ == "__main__":
    sys.exit(main())
