"""A component a test needs but this machine lacks: a skip on a developer's machine, a failure in CI.

CI (`.ci/run`, with CI=true) installs every such component (Chromium, slurm-wlm and munge, the dev extra) and runs
as root, so there a missing or broken one is a broken CI set-up, and a skip would hide that the test never ran.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> None:
    """Skip with `reason`, or fail with it in CI."""
    if in_ci():
        pytest.fail(f"CI installs this, but: {reason}", pytrace=False)
    pytest.skip(reason)
