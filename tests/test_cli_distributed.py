"""`restore` over a folder under `accelerate launch`: each process restores its own share of the inputs,
every output is written exactly once, and a second run skips what is done."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from comfyui_diffbody import cli

# "[process 2 of 2] wrote p3_* from in/p3.png": one line per input a process has written
WROTE = re.compile(r"^\[process (\d+) of (\d+)\] wrote (\S+)_\* from ", re.MULTILINE)


def launch(folder: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    """Two CPU processes (gloo) started by accelerate, each running `python -m comfyui_diffbody restore`; the
    package is found as by every command-line test (PYTHONPATH or the editable install, inherited)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two shared cores
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "0",  # a free port: other runs may hold 29500
               "-m", "comfyui_diffbody", "restore", str(folder), "--tiny", "--size-mode", "native",
               "--device", "cpu", "--out", str(out), *options]
    return subprocess.run(command, capture_output=True, text=True, cwd=out.parent, timeout=600, env=env)


def assert_each_written_once(stdout: str, stems: list[str], processes: int) -> dict[str, set[str]]:
    """Every input written by exactly one process, every process writing its part; {process: its stems}."""
    lines = WROTE.findall(stdout)
    assert {count for _, count, _ in lines} == {str(processes)}, stdout
    written = Counter(stem for _, _, stem in lines)
    assert written == Counter(stems), f"written (stem: times) {dict(written)}, expected each of {stems} once"
    shares = {}
    for process, _, stem in lines:
        shares.setdefault(process, set()).add(stem)
    assert len(shares) == processes, f"only processes {sorted(shares)} wrote anything"
    return shares


@pytest.fixture
def six_photos(tmp_path) -> Path:
    from conftest import person_photo

    folder = tmp_path / "in"
    folder.mkdir()
    photo = Image.fromarray(person_photo()).resize((64, 64), Image.BICUBIC)
    for i in range(6):
        photo.rotate(90 * (i % 4)).save(folder / f"p{i}.png")
    return folder


def test_two_processes_write_every_output_once_and_a_rerun_skips_them(six_photos, tmp_path):
    out = tmp_path / "out"
    first = launch(six_photos, out, "--chunk-size", "2")  # 3 images each: a chunk of 2, then one of 1
    assert first.returncode == 0, first.stderr[-3000:]
    stems = [f"p{i}" for i in range(6)]
    shares = assert_each_written_once(first.stdout, stems, processes=2)
    assert sorted(len(share) for share in shares.values()) == [3, 3]
    assert "Restored 6 image(s), skipped 0" in first.stdout and "image(s) per minute" in first.stdout
    assert first.stdout.count("Restored ") == 1  # the main process sums up, after the others are done
    args = cli.build_parser().parse_args(["restore", "x", "--tiny"])
    args.save_priors = True  # as --tiny sets it
    suffixes = cli.output_suffixes(args) + ["caption.txt", "recaption.txt"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem}_{suffix}" for stem in stems for suffix in suffixes)

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    second = launch(six_photos, out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert not WROTE.findall(second.stdout)
    assert second.stdout.count("0 image(s) to restore, 3 skipped") == 2
    assert "Restored 0 image(s), skipped 6" in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_the_exactly_once_check_catches_crossed_shares():
    """The check the test above relies on, on logs of wrong runs: both processes taking everything, an input
    nobody wrote, a single process doing all the work."""
    stems = ["a", "b"]
    both = "".join(f"[process {p} of 2] wrote {s}_* from in/{s}.png\n" for p in (1, 2) for s in stems)
    with pytest.raises(AssertionError, match="written"):
        assert_each_written_once(both, stems, processes=2)
    with pytest.raises(AssertionError, match="written"):
        assert_each_written_once("[process 1 of 2] wrote a_* from in/a.png\n", stems, processes=2)
    alone = "".join(f"[process 1 of 2] wrote {s}_* from in/{s}.png\n" for s in stems)
    with pytest.raises(AssertionError, match="only processes"):
        assert_each_written_once(alone, stems, processes=2)
    right = "[process 2 of 2] wrote b_* from in/b.png\n[process 1 of 2] wrote a_* from in/a.png\n"
    assert assert_each_written_once(right, stems, processes=2) == {"1": {"a"}, "2": {"b"}}


@pytest.mark.parametrize("count", [1, 2, 3, 4])
@pytest.mark.parametrize("total", [0, 1, 5, 6, 7])
def test_shares_are_disjoint_even_and_cover_every_input(count, total):
    items = [f"p{i}" for i in range(total)]
    shares = [cli.take_share(items, index, count) for index in range(count)]
    assert Counter(item for share in shares for item in share) == Counter(items)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert shares[0] == items[::count]  # the same on every run: the shares of a rerun are the first run's
    if count == 1:
        assert shares == [items]  # one process, as without accelerate: everything, in order


def test_an_input_is_skipped_only_when_all_its_outputs_are_there(tmp_path):
    args = cli.build_parser().parse_args(["restore", "x", "--save-priors"])
    suffixes = cli.output_suffixes(args)
    assert suffixes == ["ir.png", "pose.png", "pose.json", "stage1.png", "depth.png", "normal.png", "restored.png"]
    stem = tmp_path / "photo"
    for suffix in suffixes[:-1]:
        Path(f"{stem}_{suffix}").write_bytes(b"x")
    Path(f"{tmp_path}/.photo_restored.png.1234.tmp").write_bytes(b"half")  # an atomic write cut off
    assert not cli.outputs_exist(args, stem)
    Path(f"{stem}_restored.png").write_bytes(b"x")
    assert cli.outputs_exist(args, stem)
    public = cli.build_parser().parse_args(["restore", "x", "--mode", "public"])
    assert cli.output_suffixes(public) == ["restored.png"]
    public.save_priors = True
    assert "stage1.png" not in cli.output_suffixes(public)
    stage0 = cli.build_parser().parse_args(["restore", "x", "--stage0-only"])
    assert cli.output_suffixes(stage0) == ["ir.png", "pose.png", "pose.json"]


def test_inputs_that_would_share_their_outputs_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/p.png", "p.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    with pytest.raises(SystemExit, match="would both be written as p_"):
        cli.collect_images([tmp_path / "a", tmp_path / "p.jpg"])
    assert cli.collect_images([tmp_path / "a"]) == [tmp_path / "a" / "p.png"]


def test_without_a_launcher_it_is_one_process_on_the_named_device():
    import torch

    assert cli.this_process("cpu") == cli.Process(0, 1, torch.device("cpu"))
