"""A backend session in a child process with its own environment.

Why: some runtimes read settings from the environment once per process, before their first use; OpenVINO's
oneDNN reads ``ONEDNN_MAX_CPU_ISA`` (``vmlp_deploy.isa_cap``) that way. A session that must run under such a
setting while this process keeps its own runs in a child process, which loads the model with the backend's
ordinary ``load`` and answers calls over a socket pair. Timing happens inside the child with the backend's own
timer, so the round trip is never part of a measured latency.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..rundir import process_peak_rss_mb
from .base import Concurrent, LayerTime, RunOptions, Timer

#: Seconds to wait for the child to load the model (OpenVINO compiles it there).
LOAD_TIMEOUT_S = 600.0


class ChildMemory:
    """The peak resident memory of the children started while it is active (``child_memory``): those serving
    capped sessions, and NNCF's; a stage's memory figure must count the processes it started, and only those."""

    def __init__(self) -> None:
        self.ended: list[float] = []
        self.open: weakref.WeakSet[IsolatedSession] = weakref.WeakSet()

    def peak_mb(self) -> float | None:
        """The largest peak of those children, ended or still serving (None: no child was started)."""
        peaks = self.ended + [p for s in list(self.open) if (p := process_peak_rss_mb(s.pid)) is not None]
        return max(peaks) if peaks else None


_trackers: list[ChildMemory] = []


@contextmanager
def child_memory() -> Iterator[ChildMemory]:
    """Track the children of the sessions opened inside the ``with`` block."""
    tracker = ChildMemory()
    _trackers.append(tracker)
    try:
        yield tracker
    finally:
        _trackers.remove(tracker)


def note_child_peak(peak_mb: float) -> None:
    """Count a finished child that served no session (NNCF's quantize) in every active tracker."""
    for tracker in _trackers:
        tracker.ended.append(peak_mb)


class IsolatedSessionError(UserError):
    """The child failed, or a call inside it raised; the message is the child's."""


def _send(conn: Connection, message: tuple[Any, ...]) -> bool:
    """Send to the parent; False when it is gone (then the child just ends)."""
    try:
        conn.send(message)
    except OSError:
        return False
    return True


def _error(e: Exception) -> tuple[Any, ...]:
    return ("error", type(e).__name__, str(e), isinstance(e, UserError))


def _serve(conn: Connection) -> None:
    """The child (its environment set at its start): load the model it is sent, then answer calls until closed.
    Timers and concurrent runners are kept by the key ``bind_*`` returns, so several can be bound at once."""
    from . import BACKENDS

    try:
        first = conn.recv()
    except (EOFError, OSError):  # the parent went away before it sent the model
        return
    if not (isinstance(first, tuple) and len(first) == 3):  # closed before it sent the model
        return
    backend, model, options = first
    start = time.perf_counter()
    try:
        session = BACKENDS[backend].load(Path(model), options)
    except Exception as e:  # sent to the parent, which raises it there with this message
        _send(conn, _error(e))
        return
    if not _send(conn, ("ok", {"input_name": session.input_name, "input_shape": session.input_shape,
                               "precision": session.precision, "quantized": session.quantized,
                               "load_s": time.perf_counter() - start})):
        return
    bound: list[Any] = []
    while True:
        try:
            call, args = conn.recv()
        except (EOFError, OSError):
            return
        if call == "close":
            return
        try:
            if call == "bind_timer":
                bound.append(session.timer(args[0]))
                result: Any = len(bound) - 1
            elif call == "bind_concurrent":
                bound.append(session.concurrent(args[0]))
                result = len(bound) - 1
            elif call == "call_bound":
                result = bound[args[0]](*args[1:])
            else:
                result = getattr(session, call)(*args)
        except Exception as e:
            reply = _error(e)
        else:
            reply = ("ok", result)
        if not _send(conn, reply):
            return


class IsolatedSession:
    """The ``Session`` interface, served by a child process that ran ``BACKENDS[backend].load(model, options)``
    with ``env`` added to its environment. Close it (or use it as a context manager) to end the child."""

    def __init__(self, backend: str, model: Path, options: RunOptions, env: dict[str, str]) -> None:
        # A fresh interpreter (not multiprocessing's spawn, which re-imports the caller's __main__; -P: nothing
        # from the working directory shadows the installed packages) with the environment in place before it
        # starts; calls travel over a socket pair as pickled messages. Its own session keeps a Ctrl-C meant for
        # this process from killing it mid-import: this process handles the interrupt and closes it, and it exits
        # by itself when the socket closes.
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen([sys.executable, "-P", "-m", __name__, str(theirs.fileno())],
                                         pass_fds=(theirs.fileno(),), env={**os.environ, **env},
                                         start_new_session=True)
        theirs.close()
        self.pid = self._process.pid
        self._trackers = list(_trackers)
        for tracker in self._trackers:
            tracker.open.add(self)
        self._conn = Connection(ours.detach())
        self.env = dict(env)
        try:
            self._conn.send((backend, str(model), options))
            if not self._conn.poll(LOAD_TIMEOUT_S):
                raise IsolatedSessionError(f"{backend} did not load {Path(model).name} in a child process within "
                                           f"{LOAD_TIMEOUT_S:g} s")
            attrs = self._answer()
        except BaseException:
            self.close()
            raise
        self.input_name: str = attrs["input_name"]
        self.input_shape: list[int | str] = attrs["input_shape"]
        self.precision: str = attrs["precision"]
        self.quantized: bool = attrs["quantized"]
        #: The backend's own load time inside the child, without starting the child's interpreter.
        self.load_s: float = attrs["load_s"]

    def _gone(self) -> IsolatedSessionError:
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self.close()
        return IsolatedSessionError(f"the child process serving the session ended (exit code {code})")

    def _answer(self) -> Any:
        try:
            status, *payload = self._conn.recv()
        except (EOFError, OSError):
            raise self._gone() from None
        if status == "error":
            name, message, user = payload
            raise IsolatedSessionError(message if user else f"{name} in the child process: {message}")
        return payload[0]

    def _call(self, call: str, *args: Any) -> Any:
        try:
            self._conn.send((call, args))
        except OSError:
            raise self._gone() from None
        return self._answer()

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self._call("run", x)

    def timer(self, x: np.ndarray) -> Timer:
        key = self._call("bind_timer", x)
        return lambda: self._call("call_bound", key)

    def concurrent(self, x: np.ndarray) -> Concurrent:
        key = self._call("bind_concurrent", x)
        return lambda n: self._call("call_bound", key, n)

    def layer_times(self, x: np.ndarray, runs: int) -> list[LayerTime]:
        return self._call("layer_times", x, runs)

    def kernels(self) -> dict[str, tuple[str, str]]:
        return self._call("kernels")

    def describe(self) -> dict[str, Any]:
        return {**self._call("describe"), "environment": self.env}

    def close(self) -> None:
        """End the child (its peak memory is kept by the trackers that saw it open); safe to call twice."""
        peak = process_peak_rss_mb(self.pid) if self._process.poll() is None else None
        for tracker in self._trackers:
            if self in tracker.open:
                tracker.open.discard(self)
                tracker.ended += [peak] if peak is not None else []
        if self._process.poll() is None:
            try:
                self._conn.send(("close", ()))
                self._process.wait(timeout=10)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                self._process.kill()
        if self._process.returncode is None:
            self._process.wait()
        self._conn.close()

    def __enter__(self) -> IsolatedSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_conn", None) is not None:
            self.close()


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
