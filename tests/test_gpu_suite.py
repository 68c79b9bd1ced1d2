"""bench/gpu_suite.py run small on the CPU (issue 16), so the GPU suite never rots: every row runs (tiny networks,
S = 128, the 12 GB profile's rows included) through the same code paths as on a GPU, and must give a number or
an explicit 'n/a (reason)'; a run killed part-way leaves the rows it finished, in all three files.

The suite runs as a subprocess (ComfyUI's modules never enter the pytest process); it starts its own ComfyUI
servers, hence the `server` marker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comfy_harness import comfyui_dir

pytestmark = [pytest.mark.server, pytest.mark.timeout(900)]

BENCH = Path(__file__).resolve().parents[1] / "bench"
SMALL = ("--device", "cpu", "--size", "128", "--networks", "tiny")
NA = re.compile(r"^n/a \(.+\)$")


def all_rows() -> list[str]:
    sys.path.insert(0, str(BENCH))
    try:
        from suite_rows import GROUPS
    finally:
        sys.path.remove(str(BENCH))
    return [row for rows in GROUPS.values() for row in rows] + ["suite_total"]


def suite_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(BENCH / "gpu_suite.py"), *SMALL, "--out", str(out), *extra]


def suite_env() -> dict:
    return dict(os.environ, DIFFBODY_COMFYUI_DIR=str(comfyui_dir()), PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-suite")
    started = time.monotonic()
    done = subprocess.run(suite_command(out, "--profile", "12gb", "--workflow-steps", "2"), capture_output=True,
                          text=True, timeout=840,
                          env=suite_env())
    print(f"gpu suite, small on the CPU: {time.monotonic() - started:.0f} s")
    return done, out


def check_rows(results: dict, markdown: str) -> list[str]:
    """What is wrong with a finished run's files: a row missing, or with neither a number nor 'n/a (reason)'."""
    problems = []
    by_name = {row["row"]: row for row in results["rows"]}
    for name in all_rows():
        row = by_name.get(name)
        if row is None:
            problems.append(f"{name}: missing from results.json")
            continue
        value = row["value"]
        if not (isinstance(value, (int, float)) or (isinstance(value, str) and NA.match(value))):
            problems.append(f"{name}: {value!r}")
        if not re.search(rf"^\| {re.escape(name)} \| [^|]+ \|", markdown, re.M):
            problems.append(f"{name}: no figure in results.md")
    return problems


def test_every_row_gives_a_number_or_says_why_not(small_run):
    done, out = small_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    problems = check_rows(json.loads((out / "results.json").read_text()), (out / "results.md").read_text())
    assert not problems, problems
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["row"] for line in lines] == [r["row"] for r in json.loads(
        (out / "results.json").read_text())["rows"]]


def test_the_row_check_catches_a_missing_row_and_a_bare_failure(small_run):
    """The check above is not a wire: a row dropped or turned into a failure is reported."""
    _, out = small_run
    results = json.loads((out / "results.json").read_text())
    markdown = (out / "results.md").read_text()
    dropped = dict(results, rows=[r for r in results["rows"] if r["row"] != "stage2_both"])
    assert check_rows(dropped, markdown) == ["stage2_both: missing from results.json"]
    failed = dict(results, rows=[dict(r, value="failed: boom") if r["row"] == "marigold" else r
                                 for r in results["rows"]])
    assert check_rows(failed, markdown) == ["marigold: 'failed: boom'"]


def test_a_run_killed_part_way_leaves_the_rows_it_finished(tmp_path):
    """Cut off after its first row (a quick one, followed by the workflow group's model folder and server start):
    the three files hold exactly that row."""
    out = tmp_path / "cut"
    process = subprocess.Popen(suite_command(out, "--only", "stage1_cfg,workflow_full_fast"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=suite_env(), start_new_session=True)
    jsonl = out / "results.jsonl"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if jsonl.exists() and jsonl.read_text().strip():
                break
            time.sleep(0.1)
        assert process.poll() is None, "the suite ended before it could be cut off"
        os.killpg(process.pid, signal.SIGTERM)  # as a job scheduler's time limit does; the suite stops its server
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    written = [json.loads(line)["row"] for line in jsonl.read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())
    assert written == ["stage1_cfg"] == [row["row"] for row in results["rows"]]
    assert isinstance(results["rows"][0]["value"], float)
    assert re.search(r"^\| stage1_cfg \| [0-9.e-]+ \| s/step", (out / "results.md").read_text(), re.M)
