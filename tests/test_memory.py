"""slmops.memory: peak RSS is the measuring process's own, not its parent's."""

import subprocess
import sys

import numpy as np

from slmops.memory import peak_rss_mb


def test_a_child_reports_its_own_peak_not_its_parents():
    held = np.ones(25_000_000)  # 200 MB resident in this process
    parent = peak_rss_mb()
    code = "from slmops.memory import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert parent > held.nbytes / 2**20 and 0 < child < parent / 4
