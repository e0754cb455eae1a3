"""The machine under the benchmark: what it is, its memory bandwidth, and a process monitor.

Decoding one token reads every weight once, so memory bandwidth divided by the
bytes of weights is the most tokens per second the machine can decode (the
roofline). The bandwidth is measured once per machine and cached.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass
from importlib import metadata

from slmops import settings
from slmops.files import write_json
from slmops.machine import describe_cpu

PROBE_MB = 256  # well above any L3 cache, so the copy streams from RAM
LIBRARIES = ("slmops", "onnxruntime-genai", "onnxruntime", "numpy", "llama-cpp-python", "httpx")


def cpu_model() -> str:
    return describe_cpu().model


def system_info() -> dict:
    """CPU (model, instruction-set flags, label), core counts, RAM and the versions of the libraries that matter.

    ``cpu`` is the model name; ``cpu_info`` is :meth:`slmops.machine.CpuInfo.to_json`.
    """
    import psutil

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu_model(),
        "cpu_info": describe_cpu().to_json(),
        "physical_cores": psutil.cpu_count(logical=False) or 0,
        "logical_cpus": psutil.cpu_count(logical=True) or 0,
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "libraries": versions,
    }


def memory_bandwidth(refresh: bool = False, size_mb: int = PROBE_MB) -> float:
    """Memory bandwidth in GB/s: the best copy rate measured on this CPU, cached.

    Other work on the machine only ever slows a copy down, so the highest rate
    measured is the truest: ``refresh`` measures again and keeps the better value.
    """
    cache = settings.home() / "bench" / "bandwidth.json"
    key = f"{cpu_model()}|{os.cpu_count()}"
    stored = _stored_bandwidth(cache, key)
    if stored and not refresh:
        return stored
    value = max(probe_bandwidth(size_mb), stored or 0.0)
    write_json(cache, {"key": key, "gb_s": value, "measured": time.time()})
    return value


def _stored_bandwidth(cache, key: str) -> float | None:
    try:
        stored = json.loads(cache.read_text())
        return float(stored["gb_s"]) if stored.get("key") == key else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def probe_bandwidth(size_mb: int = PROBE_MB, repeats: int = 5) -> float:
    """Best copy rate with one thread and with one thread per CPU (a copy reads and writes its bytes)."""
    workers = max(1, os.cpu_count() or 1)
    return max(_copy_rate(size_mb, 1, repeats), _copy_rate(size_mb, workers, repeats) if workers > 1 else 0.0)


def _copy_rate(size_mb: int, workers: int, repeats: int) -> float:
    import numpy as np

    n = size_mb * 2**20 // 8 // workers
    sources = [np.ones(n) for _ in range(workers)]
    targets = [np.ones(n) for _ in range(workers)]  # touched, so no page faults in the timing

    def copy(i: int) -> None:
        np.copyto(targets[i], sources[i])  # numpy releases the GIL here

    best = 0.0
    for _ in range(repeats):
        threads = [threading.Thread(target=copy, args=(i,)) for i in range(workers)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = max(best, 2 * n * 8 * workers / (time.perf_counter() - start) / 1e9)
    return best


@dataclass
class Usage:
    """Memory and CPU of the watched process over one case."""

    rss_peak_mb: float
    rss_steady_mb: float
    cpu_percent: float  # 100 = one core busy for the whole case


class Monitor:
    """Samples a process's RSS in a thread and its CPU time between start and stop."""

    def __init__(self, pid: int | None, interval: float = 0.05):
        import psutil

        self.process = psutil.Process(pid) if pid else None
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Monitor:
        if self.process is None:
            return self
        self._cpu0 = sum(self.process.cpu_times()[:2])
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, args=(self.process,), daemon=True)
        self._thread.start()
        return self

    def _run(self, process) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(process.memory_info().rss)
            except Exception:  # the process may exit under us
                return
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        if self._thread is None or self.process is None:
            return
        self._stop.set()
        self._thread.join()
        self.usage = self._usage(self.process)

    def _usage(self, process) -> Usage | None:
        try:
            cpu = sum(process.cpu_times()[:2]) - self._cpu0
        except Exception:
            return None
        wall = time.perf_counter() - self._t0
        if not self.samples:
            return None
        # steady: the median of the second half, after load-time allocations settled
        steady = statistics.median(self.samples[len(self.samples) // 2 :])
        return Usage(
            rss_peak_mb=max(self.samples) / 2**20,
            rss_steady_mb=steady / 2**20,
            cpu_percent=100 * cpu / wall if wall > 0 else 0.0,
        )

    usage: Usage | None = None
