"""User-facing errors: one line naming the problem and the fix, printed without a traceback by the CLI.

Each class has its own exit code so scripts and CI can tell a bad input from a failed gate or a missing runtime
(README: "Bad input and exit codes"): 2 usage/bad input, 3 validation gate, 4 fidelity gate, 5 backend
unavailable; the CLI adds 130 (interrupted: SIGINT or SIGTERM) and 1 (internal error).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (or their files). The CLI prints ``error: <message>`` and exits with 2."""

    exit_code = 2


class ValidationError(UserError):
    """The exported model disagrees with PyTorch beyond tolerance: a hard gate, exit code 3."""

    exit_code = 3


class FidelityGateError(UserError):
    """The INT8 model loses more accuracy than allowed (``quantize --max-drop``): a hard gate, exit code 4."""

    exit_code = 4


class BackendUnavailableError(UserError):
    """A backend's library is missing or fails to load here: not the input's fault, so its own exit code 5."""

    exit_code = 5


def first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's first line (at most ``limit`` characters), or its type's name when it says nothing: the
    part of a library's multi-line failure that fits in one ``error:`` line."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]
