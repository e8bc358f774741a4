"""A rich progress bar for export: one step for loading, one per layer, one for writing."""

from __future__ import annotations

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class ExportProgress:
    def __init__(self, num_layers: int, enabled: bool):
        self._progress = Progress(TextColumn("[bold]export[/] {task.description:<20}"), BarColumn(),
                                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                  disable=not enabled)
        self._task = self._progress.add_task("starting", total=num_layers + 2)

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def stage(self, name: str) -> None:
        self._progress.update(self._task, description=name)

    def step_done(self) -> None:
        self._progress.advance(self._task)

    def layer_done(self, index: int) -> None:
        self._progress.update(self._task, description=f"layer {index + 1}", advance=1)
