"""Progress bars for long work, on stderr (rich); library code only sees the ProgressSink calls."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

T = TypeVar("T")


def console() -> Console:
    return Console(stderr=True)


class TimeLeftColumn(ProgressColumn):
    """Time left at the lane's average pace so far: elapsed x (total - done) / done.

    rich's own estimate uses only the advances of the last 30 s and shows nothing until two
    fall in that window; a campaign's lanes advance in bursts (a batch's models finish close
    together, then the next batch is sent), which would leave it blank most of the time. The
    average over the whole lane is steady and exists from the first job done.
    """

    def render(self, task: Task) -> Text:
        if task.finished:
            return Text(_clock(task.finished_time), style="progress.elapsed")
        elapsed, total = task.elapsed, task.total
        if not elapsed or total is None or task.completed <= 0:
            return Text("-:--:--", style="progress.remaining")
        left = elapsed * max(total - task.completed, 0.0) / task.completed
        return Text(_clock(left), style="progress.remaining")


def _clock(seconds: float | None) -> str:
    minutes, secs = divmod(int(seconds or 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


def _make_progress(con: Console, **kwargs: Any) -> Progress:
    """The bar layout every lane uses: spinner, title, bar, done/total, elapsed, time left."""
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeLeftColumn(),
                    console=con, transient=False, **kwargs)


class Bars:
    """One bar per lane (e.g. device/runtime); implements bench.campaign.ProgressSink."""

    def __init__(self, title: str, con: Console | None = None) -> None:
        self.title = title
        self.console = con or console()
        self.progress = _make_progress(self.console)
        self.tasks: dict[str, Any] = {}
        self.done: dict[str, float] = {}

    def __enter__(self) -> Bars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, lane: str, total: int) -> None:
        self.tasks[lane] = self.progress.add_task(f"{self.title} {lane}", total=total)
        self.done[lane] = 0.0

    def advance(self, lane: str, done: float) -> None:
        """Add `done` jobs; fractions of a job (models reported part way) add up to whole jobs
        without the float error that would leave a finished lane at 38.999 of 39."""
        self.done[lane] += done
        self.progress.update(self.tasks[lane], completed=round(self.done[lane], 6))

    def note(self, lane: str, text: str) -> None:
        self.progress.console.print(f"{lane}: {text}", style="yellow", markup=False,
                                    highlight=False, soft_wrap=True)


def track(items: Iterable[T], description: str, total: int | None = None,
          con: Console | None = None) -> Iterator[T]:
    items = list(items) if total is None else items
    total = len(items) if total is None else total  # type: ignore[arg-type]
    with _make_progress(con or console()) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
