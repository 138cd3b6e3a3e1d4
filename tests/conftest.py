"""Shared fixtures: deterministic seeds and an in-process CLI runner."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from vmlp_deploy.cli import main


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``vmlp-deploy ARGS`` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
