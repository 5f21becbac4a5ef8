"""Shared benchmark plumbing: device description, timing with warm-up, peak memory of one measured call."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def device_info(device: torch.device) -> dict:
    """What a result was measured on, so runs can be compared."""
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = _cpu_name()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> dict:
    """Median and all wall times (s) of `fn()` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times_s": times}


def rss_kib(field: str) -> int:
    """A memory field of this process in /proc/self/status, in KiB (e.g. "VmRSS", "VmHWM")."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def return_freed_memory_to_os() -> None:
    """Make glibc serve every block >= 64 KiB by mmap and unmap it on free.

    Otherwise freed tensor memory stays in malloc's heap, a repeated call reuses it, and the resident set no
    longer shows what the call needs. This also makes later allocations slower, so measure memory after timing.
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.malloc_trim(0)  # give back what the heap already holds free


def peak_memory_of(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory (MiB) that one call of `fn` adds on top of what was in use before it.

    CUDA: the allocator's peak. CPU: the process's peak resident set (VmHWM), reset first through
    /proc/self/clear_refs, minus the resident set before the call (Linux; see `return_freed_memory_to_os`).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return_freed_memory_to_os()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = rss_kib("VmRSS")
    fn()
    return (rss_kib("VmHWM") - before) / 1024


def write_result(result: dict, output: str | Path | None) -> None:
    """Print the result as JSON and write it to `output` if given."""
    text = json.dumps(result, indent=2)
    print(text)
    if output is not None:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
