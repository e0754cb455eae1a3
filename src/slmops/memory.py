"""The memory this process uses, measured one way for every report that shows it."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's own peak resident memory so far, in MiB.

    Read from the kernel's high-water mark (``VmHWM``). ``ru_maxrss`` would not do: Linux
    carries the parent's peak across fork and exec, so every child of a large sweep reported
    the sweep's own peak. Where /proc is missing, ``ru_maxrss`` (kilobytes on Linux) is all there is.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            peak_kb = float(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
    except (OSError, StopIteration):
        peak_kb = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak_kb / 1024


# glibc's mallopt() parameter for the size from which an allocation gets a mapping of its own.
M_MMAP_THRESHOLD = -3
LARGE_BUFFER = 1 << 20


def return_large_buffers(threshold: int = LARGE_BUFFER) -> bool:
    """Have glibc's malloc give every buffer of ``threshold`` bytes or more back to the system
    when it is freed; False where that cannot be set (another C library).

    glibc raises its threshold (up to 32 MB) each time a mapped buffer is freed, so after the
    first prefill onnxruntime's activations (1-2 MB a node for 256 tokens; its arena is off in
    the batch) come from the heap, which keeps them: a server held ~75 MB more after 8 prompts
    than with this fixed threshold. 1 MB keeps the small buffers of decode steps on the heap.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
