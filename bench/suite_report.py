"""The GPU suite's figures: rows written as they come (JSON Lines, JSON and Markdown rewritten after each row, so
a run cut off leaves what it measured), FLOP counts, the GPU's peak, memory peaks."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

# Dense fp16/bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, by device-name substring.
PEAK_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
               "A100": 312.0, "L40S": 362.1, "L4": 121.0, "RTX 4090": 165.2, "A10G": 70.0}


def peak_tflops(device) -> tuple[float | None, str]:
    """(peak TFLOP/s in fp16/bf16, the device's name) or (None, why not) on the CPU or an unknown GPU."""
    import torch

    if device.type != "cuda":
        return None, "CPU: no tensor-core peak"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value, name
    return None, f"no peak known for {name}"


def of_peak(ctx, flops: float, seconds: float):
    """The fraction of the GPU's peak reached: FLOPs / seconds / peak FLOP/s; n/a on the CPU or an unknown GPU."""
    return flops / seconds / (ctx.peak * 1e12) if ctx.peak else na(ctx.peak_name)


def count_flops(run) -> float:
    """FLOPs of `run()` as torch's FlopCounterMode counts them (matmuls, convolutions, GPU attention kernels;
    torch 2.x has no formula for the CPU attention kernel, so on the CPU attention is left out)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


class PeakMemory:
    """Peak memory of a block, through bench/stage2_step.py's readings: on CUDA torch.cuda.max_memory_allocated
    above what was allocated when the block began (the block's own weights and activations); on the CPU the
    process's resident-set peak (VmHWM, reset when the block begins; Python, torch and all it holds included)."""

    def __init__(self, device):
        self.device, self.mb, self.scope = device, None, ""

    def __enter__(self):
        from stage2_step import start_peak_memory

        self.before, self._reset = start_peak_memory(self.device)
        self.scope = ("VRAM above what the suite held before" if self.device.type == "cuda" else
                      "process peak RSS" if self._reset == "reset" else "process peak RSS (whole run)")
        return self

    def __exit__(self, *exc):
        from stage2_step import read_peak_memory

        self.mb = read_peak_memory(self.device, self._reset) - (self.before if self.device.type == "cuda" else 0.0)
        return False


def na(reason: str) -> str:
    return f"n/a ({reason})"


class Report:
    """results.jsonl (one line per row as it finishes), results.json and results.md (rewritten after each row)."""

    COLUMNS = ("row", "figure", "unit", "peak MB", "TFLOP/step", "of peak", "target", "note")

    def __init__(self, out_dir: str, header: dict):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.header, self.rows, self.failed = header, [], []
        (self.dir / "results.jsonl").write_text("")
        self._rewrite()

    def add(self, name: str, value, unit: str = "", **extra) -> dict:
        """value: a number, or 'n/a (reason)' / 'failed: ...' text. extra: peak_mb, tflop_per_step,
        fraction_of_peak, target, note, and any further figures (kept in the JSON)."""
        row = {"row": name, "value": value, "unit": unit, **extra, "finished": time.strftime("%H:%M:%S")}
        if isinstance(value, str) and value.startswith("failed"):
            self.failed.append(name)
        self.rows.append(row)
        with open(self.dir / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        self._rewrite()
        print(f"[suite] {name}: {format_value(value)} {unit}  {row.get('note', '')}", flush=True)
        return row

    def value(self, name: str):
        """A finished row's number, or None where the row has none (not run, n/a, failed)."""
        for row in self.rows:
            if row["row"] == name and isinstance(row["value"], (int, float)):
                return row["value"]
        return None

    def row(self, name: str) -> dict | None:
        return next((row for row in self.rows if row["row"] == name), None)

    def _rewrite(self) -> None:
        _write_atomic(self.dir / "results.json", json.dumps({"header": self.header, "rows": self.rows}, indent=1))
        _write_atomic(self.dir / "results.md", self.markdown())

    def markdown(self) -> str:
        lines = ["# DiffBody GPU suite", ""]
        lines += [f"- {key}: {value}" for key, value in self.header.items()]
        lines += ["", "| " + " | ".join(self.COLUMNS) + " |", "|" + " --- |" * len(self.COLUMNS)]
        for r in self.rows:
            cells = (r["row"], format_value(r["value"]), r["unit"], format_value(r.get("peak_mb")),
                     format_value(r.get("tflop_per_step")), format_value(r.get("fraction_of_peak")),
                     r.get("target", ""), r.get("note", ""))
            lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
        return "\n".join(lines) + "\n"


def format_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)
