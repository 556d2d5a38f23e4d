"""What a test does when a system tool it drives (Chromium, Prometheus) is missing.

As root, ``scripts/ensure-servers`` installs them (CI runs it first), so a
missing one is a failure to say loudly; as another user it can only say what
to install, so the tests that need the tool skip, naming it.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

from resilient.testing._binaries import MissingBinaryError


def missing(exc: MissingBinaryError) -> NoReturn:
    """Skip (not root) or fail (root) for a tool that is not installed."""
    if os.geteuid() != 0:
        pytest.skip(f"{exc} (as root, scripts/ensure-servers installs it)")
    pytest.fail(f"{exc}; run scripts/ensure-servers, which installs it as root")
