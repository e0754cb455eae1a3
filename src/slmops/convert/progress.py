"""Progress of a conversion: rich progress bars named after its stages."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class Stages:
    """Times each stage and shows it as a bar; `log_level` 0 shows nothing."""

    def __init__(self, log_level: int = 1):
        self.log_level = log_level
        self.progress = Progress(
            TextColumn("{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            # bound now: the builder's output is redirected while bars are drawn
            console=Console(file=sys.stderr),
            disable=log_level < 1,
        )
        self._times: dict[str, float] = {}
        self._current: tuple[str, TaskID, float] | None = None
        self._layers = 0

    def __enter__(self) -> Stages:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._finish()
        self.progress.stop()

    @contextmanager
    def stage(self, name: str, total: int = 1):
        self._start(name, total)
        try:
            yield
        finally:
            self._finish()

    def expect_layers(self, count: int) -> None:
        self._layers = count

    def on_builder_line(self, stage: str, layer: int | None) -> None:
        """Called by the builder's output parser when a stage starts or a layer is read."""
        if self._current is None or self._current[0] != stage:
            self._finish()
            self._start(stage, self._layers if stage == "build graph" and self._layers else 1)
        if layer is not None and self._current is not None:
            self.progress.update(self._current[1], completed=layer + 1)

    def say(self, line: str) -> None:
        """A line about the current stage, above the bars (a stage of minutes says what it is doing)."""
        if self.log_level >= 1:
            self.progress.console.print(f"  {line}")

    def durations(self) -> dict[str, float]:
        self._finish()
        return {name: round(seconds, 2) for name, seconds in self._times.items()}

    def _start(self, name: str, total: int) -> None:
        task = self.progress.add_task(name, total=max(total, 1))
        self._current = (name, task, time.perf_counter())

    def _finish(self) -> None:
        if self._current is None:
            return
        name, task, started = self._current
        self.progress.update(task, completed=self.progress.tasks[task].total)
        self._times[name] = self._times.get(name, 0.0) + time.perf_counter() - started
        self._current = None
        if self.log_level >= 2:
            self.progress.console.print(f"  {name}: {self._times[name]:.1f} s")
