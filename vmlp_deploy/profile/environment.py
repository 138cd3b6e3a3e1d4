"""The machine and software a profile ran on: :func:`vmlp_deploy.records.host_environment`, the one place it is
captured, under the name ``profile/run.py`` calls until it imports it from ``records`` itself."""

from __future__ import annotations

from ..records import host_environment as capture

__all__ = ["capture"]
