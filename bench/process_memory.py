"""Process memory readings shared by the bench scripts (Linux /proc; CPU runs)."""

from __future__ import annotations

import resource


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (VmHWM) to its current RSS by writing 5 to
    /proc/self/clear_refs; False where that is not allowed (then only the whole-process peak is known)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def proc_status_mb(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM, ...) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def whole_process_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
