"""A ComfyUI custom-node folder the GPU suite links into its server (bench/suite_server.py). No nodes: a route
GET /diffbody_bench/memory[?reset=1] answering the server process's peak memory since the last reset (CUDA:
torch.cuda.max_memory_allocated; always: the resident-set peak VmHWM), and, where DIFFBODY_BENCH_VRAM_GIB is set,
a hard VRAM cap on the server process (torch.cuda.set_per_process_memory_fraction), set at import, before any
model loads (the suite also passes --reserve-vram, so ComfyUI's own budgeting plans for the cap)."""

import os

import torch
from aiohttp import web
from server import PromptServer

NODE_CLASS_MAPPINGS = {}
CAP_GIB = os.environ.get("DIFFBODY_BENCH_VRAM_GIB")
if CAP_GIB and torch.cuda.is_available():
    _total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, float(CAP_GIB) * 2 ** 30 / _total))


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


@PromptServer.instance.routes.get("/diffbody_bench/memory")
async def memory(request):
    answer = {"rss_peak_mb": _vm_hwm_mb(), "vram_cap_gib": float(CAP_GIB) if CAP_GIB else None}
    if torch.cuda.is_available():
        answer["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        answer["cuda_total_mb"] = torch.cuda.get_device_properties(0).total_memory / 2 ** 20
    if request.query.get("reset"):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:  # not allowed here: the RSS peak then covers the whole server run, and says so
            answer["rss_peak_scope"] = "whole server run"
    return web.json_response(answer)
