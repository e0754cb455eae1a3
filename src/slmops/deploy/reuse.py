"""A deploy of a source already deployed the same way on this CPU copies that export instead of building it
(its pick, or a candidate it measures again).

The calibrated INT4 build is most of a first deploy (SmolLM2 on a 2-core AVX2 Zen 3: 422 of 633 s).
A cached model whose deploy report records the same build (the source's sha256, the variant, the
quantizer's settings as conversion.json notes them, the installed libraries and this CPU, whose
kernels ran the calibration) holds what a build would write again, so its files are copied and, on
the same eval windows, its scores kept. `slmops cache remove NAME` makes the next deploy build afresh.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from slmops.files import link_or_copy

REPORT = "deploy-report.json"
REPORT_MARKDOWN = "deploy-report.md"
LINKED_FROM_BYTES = 1 << 20  # files this large (the weights) are hard-linked: nothing writes them


@dataclass
class EarlierExport:
    """A cached model built the way this deploy would build its export."""

    name: str
    path: Path
    quality: dict | None  # its eval against the FP32 export, as its deploy report keeps it


def build_note(variant) -> str:
    """A variant's conversion as its report says it, the quantizer's settings included."""
    from slmops.convert.weight_only import note

    options = variant.options()
    return note(options) if variant.post_build and options is not None else variant.describe()


def build_key(source_sha: str, variant) -> dict:
    """What makes an export's bytes: two deploys with the same key build the same files."""
    from slmops.convert.report import library_versions
    from slmops.machine import key as machine_key

    return {
        "source_sha256": source_sha,
        "variant": variant.name,
        "quantization": dict(variant.quantization),
        "how": build_note(variant),
        "versions": library_versions(),
        "machine": machine_key(),
    }


def find_earlier(key: dict) -> EarlierExport | None:
    """The first valid cached model whose deploy report records ``key``."""
    from slmops.cache import store

    for entry in store.scan():
        if not entry.valid:
            continue
        try:
            report = json.loads((entry.path / REPORT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(report, dict) and report.get("build") == key:
            return EarlierExport(entry.name, entry.path, report.get("quality"))
    return None


def copy_export(earlier: Path, folder: Path) -> None:
    """The earlier export's files into ``folder``, without what the deploy writes anew (its report, the
    draft cost it measures, the cache's name file)."""
    from slmops.cache.scan import MARKER
    from slmops.modelfolder import draft_cost
    from slmops.modelfolder.inference_model import FILENAME

    made_again = {REPORT, REPORT_MARKDOWN, draft_cost.FILENAME, FILENAME, MARKER}
    folder.mkdir(parents=True)
    for item in sorted(earlier.iterdir()):
        target = folder / item.name
        if item.name in made_again:
            continue
        if item.is_dir():
            shutil.copytree(item, target)
        elif item.stat().st_size >= LINKED_FROM_BYTES:
            link_or_copy(item, target)
        else:
            shutil.copy2(item, target)


def scores_on(earlier: EarlierExport, windows: int) -> dict | None:
    """Its eval report when it was scored on ``windows`` windows, as this deploy would score it."""
    quality = earlier.quality
    return quality if isinstance(quality, dict) and quality.get("windows") == windows else None
