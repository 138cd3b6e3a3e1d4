"""A progress bar for the long loops of quantization (loading images, calibrating, measuring).

It draws on the console of a :class:`~vmlp_deploy.progress.Steps` reporter and ends with the same
``✓ title (1.2 s)`` line; with a quiet reporter it draws nothing. It must not run inside ``Steps.step``:
rich allows one live display at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..progress import Progress as Reporter


@contextmanager
def bar(reporter: Reporter, title: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a transient bar when the reporter has a console.

    On a console that is not a terminal (a log file, CI) only the final check line is printed.
    """
    console = getattr(reporter, "console", None)
    if console is None:
        yield lambda n=1: None
        return
    if not console.is_terminal:
        start = time.perf_counter()
        yield lambda n=1: None
        console.print(f"[green]✓[/green] {title} [dim]({time.perf_counter() - start:.1f} s)[/dim]")
        return
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=True) as live:
            task = live.add_task(title, total=total)
            yield lambda n=1: live.advance(task, n)
    except BaseException:
        console.print(f"[red]✗[/red] {title}")
        raise
    console.print(f"[green]✓[/green] {title} [dim]({time.perf_counter() - start:.1f} s)[/dim]")
