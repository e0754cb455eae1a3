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
