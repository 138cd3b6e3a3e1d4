"""Step-by-step progress for long stages: a spinner per step, then a check line with its duration; and the one
step helper that times a stage's named steps for its manifest."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Protocol

from rich.console import Console


class Progress(Protocol):
    def step(self, title: str) -> Iterator[None]: ...

    def note(self, text: str) -> None: ...


class Quiet:
    """No output: for library use and tests."""

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        yield

    def note(self, text: str) -> None:
        return None


class Steps:
    """Rich spinner while a step runs; ``✓ title (1.2 s)`` when it ends, ``✗ title`` when it fails."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            with self.console.status(f"{title}..."):
                yield
        except BaseException:
            self.console.print(f"[red]✗[/red] {title}", soft_wrap=True)
            raise
        elapsed = time.perf_counter() - start
        self.console.print(f"[green]✓[/green] {title} [dim]({elapsed:.1f} s)[/dim]", soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(f"  {text}", soft_wrap=True)


class TimedSteps:
    """A stage's steps shown through ``progress`` and timed under their names: the manifest's ``timings_s`` are
    ``seconds``, so a stage never times itself. One per stage run (a Progress may serve several stages)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, title: str, name: str | None = None) -> Iterator[None]:
        """Show ``title``; when the step succeeds and has a ``name``, keep its seconds under it."""
        with self.progress.step(title), (self.timed(name) if name is not None else nullcontext()):
            yield

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Keep the seconds (3 decimals) of a part that shows its own progress (a bar, several steps), if it
        succeeds."""
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)

    def note(self, text: str) -> None:
        self.progress.note(text)
