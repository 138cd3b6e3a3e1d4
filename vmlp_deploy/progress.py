"""Step-by-step progress for long stages: a spinner per step, then a check line with its duration."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
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
