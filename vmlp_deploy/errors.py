"""User-facing errors: one line naming the problem and the fix, printed without a traceback by the CLI."""

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
