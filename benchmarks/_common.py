"""Helpers shared by the benchmarks: interleaved timing with medians, peak memory, machine and
library description, and fresh-subprocess probes that report one JSON line."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping

import torch


def interleaved_medians(
    functions: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1, sync: Callable[[], None] | None = None
) -> dict[str, dict[str, float | list[float]]]:
    """Seconds per call of each function, called in turn `repeats` times after `warmup` rounds.

    Alternating the functions makes load from other processes fall on each of them alike, and the
    median of the repeats ignores the odd stall; ratios of medians are what holds on a busy machine.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for function in functions.values():
            function()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            sync()
            samples[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(times), "samples_s": times} for name, times in samples.items()}


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run a block with `count` intra-op threads (per-core figures), restoring the previous count."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def current_rss_mib() -> float:
    """Resident memory of this process now (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def reset_peak_rss() -> bool:
    """Set this process's peak-RSS mark to its current RSS (Linux >= 4.0: `5` into /proc/self/clear_refs),
    so a peak read afterwards belongs to the work that follows and not to imports or set-up."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """High-water resident memory of this process: VmHWM (which reset_peak_rss resets), else ru_maxrss."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except (OSError, ValueError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict[str, object]:
    """What a figure depends on: hardware, load at the time, library versions and thread count."""
    import timm
    import transformers

    info: dict[str, object] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_slug(info: Mapping[str, object]) -> str:
    """A file name for the results of this kind of machine, e.g. `cpu-amd-epyc-7763-2c`."""
    name = str(info.get("gpu") or info["cpu"])
    name = re.sub(r"\((r|tm)\)|cpu|processor|@.*$|\d+-core", "", name, flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    kind = "gpu" if info.get("gpu") else "cpu"
    return f"{kind}-{slug}-{info['cpu_count']}c"


def run_probes(script: str, argument_lists: list[list[str]], timeout: float = 900.0) -> list[dict]:
    """Run `python script arguments` once per list, each in a fresh interpreter, and parse the JSON its
    last line prints. A fresh process is the clean way to read a peak; they run side by side because
    only their memory is read, never their time. They get this process's torch thread count."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    processes = [
        subprocess.Popen(
            [sys.executable, script, *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for arguments in argument_lists
    ]
    results = []
    for arguments, process in zip(argument_lists, processes):
        stdout, stderr = process.communicate(timeout=timeout)
        lines = stdout.strip().splitlines()
        if process.returncode != 0 or not lines:
            raise RuntimeError(
                f"probe {os.path.basename(script)} {' '.join(arguments)} exited with {process.returncode}: "
                f"{stderr.strip()[-2000:]}"
            )
        results.append(json.loads(lines[-1]))
    return results
