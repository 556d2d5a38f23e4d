"""``resilient dashboard``: a live page of a fleet's breakers, and its controls.

One idea: what an operator opens at 3 a.m. to see which breakers are open,
since when and why, and to force one open fleet-wide. The parts:
``_monitor.py`` (the fleet, read from Redis and followed), ``_config.py``
(the etcd config in force), ``_auth.py`` (the control token), ``_app.py``
(the aiohttp routes: page, JSON, server-sent events, controls),
``_command.py`` (the command) and ``static/`` (the page: plain HTML, JS and
CSS, no build step). Needs ``resilient[dashboard]``.

Names are loaded on first use, so the command line (which imports
``_command``) does not load aiohttp for ``resilient --help``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resilient.dashboard._app import ACTIONS, create_app
    from resilient.dashboard._auth import Token
    from resilient.dashboard._config import ConfigView
    from resilient.dashboard._monitor import FleetMonitor, Transition

__all__ = ["ACTIONS", "ConfigView", "FleetMonitor", "Token", "Transition", "create_app"]

_LAZY = {
    "ACTIONS": "resilient.dashboard._app",
    "create_app": "resilient.dashboard._app",
    "Token": "resilient.dashboard._auth",
    "ConfigView": "resilient.dashboard._config",
    "FleetMonitor": "resilient.dashboard._monitor",
    "Transition": "resilient.dashboard._monitor",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'resilient.dashboard' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
