"""Progress bars for long work, on stderr (rich); library code only sees the ProgressSink calls."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def console() -> Console:
    return Console(stderr=True)


def _progress(con: Console) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=con, transient=False)


class Bars:
    """One bar per lane (e.g. device/runtime); implements bench.campaign.ProgressSink."""

    def __init__(self, title: str, con: Console | None = None) -> None:
        self.title = title
        self.console = con or console()
        self.progress = _progress(self.console)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Bars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, lane: str, total: int) -> None:
        self.tasks[lane] = self.progress.add_task(f"{self.title} {lane}", total=total)

    def advance(self, lane: str, done: int) -> None:
        self.progress.advance(self.tasks[lane], done)

    def note(self, lane: str, text: str) -> None:
        self.progress.console.print(f"[yellow]{lane}[/]: {text}")


def track(items: Iterable[T], description: str, total: int | None = None,
          con: Console | None = None) -> Iterator[T]:
    items = list(items) if total is None else items
    total = len(items) if total is None else total  # type: ignore[arg-type]
    with _progress(con or console()) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
