"""``draft-cost.json``: what one drafted token costs a verify on the CPU that serves the folder.

Prompt-lookup speculation weighs every verify: the tokens it gained against the positions
it read beyond the one a plain step reads. That cost depends on the CPU and the model
(SmolLM2-135M INT4 on a Zen 4 class CPU: about a quarter of a decode step a position; on a
Zen 5 class one, and for Qwen2.5-0.5B, about a tenth), so `deploy` measures it on the machine
it deploys on and keeps it here, with that machine's CPU. The runtime reads it only on the
same CPU; elsewhere it assumes the default. A figure kept, not re-measured at each load, so a
greedy answer drafts the same way, and gives the same tokens, run after run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from slmops.files import write_json

FILENAME = "draft-cost.json"


@dataclass
class DraftCost:
    """A measurement of verify costs.

    Attributes:
        cpu: the CPU it was measured on (:func:`slmops.machine.key`).
        position_cost: decode steps one drafted position adds to a verify.
        verify_ms: median milliseconds of a forward reading 1 + k positions, by k (0: a plain step).
    """

    cpu: str
    position_cost: float
    verify_ms: dict[str, float]


def read(folder: Path, cpu: str) -> float | None:
    """The position cost kept in ``folder`` for ``cpu``; None when none was measured on that CPU.

    A file that cannot be read as a measurement counts as none: it only tunes speed.
    """
    try:
        data = json.loads((Path(folder) / FILENAME).read_text(encoding="utf-8"))
        cost = DraftCost(**data)
    except (OSError, ValueError, TypeError):
        return None
    if cost.cpu != cpu or not isinstance(cost.position_cost, (int, float)) or cost.position_cost <= 0:
        return None
    return float(cost.position_cost)


def write(folder: Path, cost: DraftCost) -> Path:
    """Keep ``cost`` in ``folder``, written whole."""
    return write_json(Path(folder) / FILENAME, asdict(cost))
