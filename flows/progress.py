"""Progress you can see: each stage's start and end, and the progress of the long ones (distillation,
training, evaluation), sent to two places at once:

- the flow run's Prefect progress artifact ``<stage>-progress`` (the percentage, and a description with the
  counts, loss and ETA), which the Prefect UI shows on the run's Artifacts tab;
- whatever listens in this process (:func:`listening`): ``slm run`` prints stage lines and rich progress bars.

The tasks report through plain callbacks (``on_chunk``, ``on_batch``, a training ``on_progress``); this
module turns them into artifact updates and listener calls, so tasks/ knows nothing of Prefect.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

UPDATE_EVERY_S = 1.0  # at most one artifact update a second (each is an API call), and always the last one


class ProgressListener(Protocol):
    """What ``slm run`` (or a test) receives while a flow runs in its process."""

    def stage_started(self, stage: str) -> None: ...

    def stage_progress(self, stage: str, done: int, total: int, detail: str) -> None: ...

    def stage_ended(self, stage: str, state: str, seconds: float) -> None: ...


_listeners: list[ProgressListener] = []
_lock = threading.Lock()


@contextlib.contextmanager
def listening(listener: ProgressListener) -> Iterator[ProgressListener]:
    """Send stage events of flows run in this process (tasks run in threads of it) to ``listener``."""
    with _lock:
        _listeners.append(listener)
    try:
        yield listener
    finally:
        with _lock:
            _listeners.remove(listener)


def _each(call: Callable[[ProgressListener], None]) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        call(listener)


def reported_stage(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A Prefect task's function that announces the task's start and end (state, seconds) to the listeners;
    placed under ``@task``, so the announcement comes from inside the task run (each retry is announced)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from prefect.runtime import task_run

        stage = task_run.task_name or fn.__name__
        started = time.monotonic()
        _each(lambda listener: listener.stage_started(stage))
        state = "Failed"
        try:
            result = fn(*args, **kwargs)
            state = "Completed"
            return result
        finally:
            seconds = time.monotonic() - started
            _each(lambda listener: listener.stage_ended(stage, state, seconds))

    return run


class StageProgress:
    """``(done, total)`` callbacks of one stage -> the run's progress artifact and the listeners.

    Called inside a Prefect task or flow run (the artifact belongs to it and its flow run); outside one (a
    plain function call in a test or a script) only the listeners hear it."""

    def __init__(self, stage: str, unit: str) -> None:
        self.stage = stage
        self.unit = unit
        self.artifact_id: Any = None
        self.percent = 0.0
        self._last_update = 0.0

    def __call__(self, done: int, total: int, detail: str = "") -> None:
        percent = 100.0 if total <= 0 else min(100.0, 100.0 * done / total)
        text = f"{self.stage}: {done}/{total} {self.unit}" + (f", {detail}" if detail else "")
        self._artifact(percent, text, final=done >= total)
        _each(lambda listener: listener.stage_progress(self.stage, done, total, detail))

    def _artifact(self, percent: float, description: str, final: bool) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact
        from prefect.context import FlowRunContext, TaskRunContext

        if TaskRunContext.get() is None and FlowRunContext.get() is None:
            return
        now = time.monotonic()
        if self.artifact_id is None:
            self.artifact_id = create_progress_artifact(
                progress=percent, key=f"{self.stage}-progress", description=description
            )
        elif final or now - self._last_update >= UPDATE_EVERY_S:
            update_progress_artifact(self.artifact_id, percent, description)
        else:
            return
        self.percent, self._last_update = percent, now


def train_progress(stage: str = "train-challenger") -> Callable[[Any], None]:
    """A training ``on_progress`` (``tasks.train.train.TrainSnapshot``) as stage progress in steps."""
    report = StageProgress(stage, "steps")

    def on_progress(snapshot: Any) -> None:
        report(snapshot.step, snapshot.total, snapshot.describe())

    return on_progress


class RichStages:
    """``slm run``'s listener: a line when each stage starts and ends (state, seconds), and a progress bar
    (done/total, the detail: loss, tokens/s, ETA) while a long stage reports progress."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = console
        self.bars = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.tasks: dict[str, Any] = {}

    def stage_started(self, stage: str) -> None:
        self.bars.console.print(f"[cyan]>[/cyan] {stage} started")

    def stage_progress(self, stage: str, done: int, total: int, detail: str) -> None:
        if stage not in self.tasks:
            if not self.tasks:
                self.bars.start()
            self.tasks[stage] = self.bars.add_task(stage, total=total, detail=detail)
        self.bars.update(self.tasks[stage], completed=done, total=total, detail=detail)

    def stage_ended(self, stage: str, state: str, seconds: float) -> None:
        for task_id in self.tasks.values():  # one stage runs at a time: its bars end with it
            self.bars.remove_task(task_id)
        if self.tasks:
            self.bars.stop()
        self.tasks.clear()
        mark = "[green]done[/green]" if state.lower() == "completed" else f"[red]{state}[/red]"
        self.bars.console.print(f"[cyan]<[/cyan] {stage} {mark} in {seconds:.1f} s")
