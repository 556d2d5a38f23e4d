"""Breaker configuration: the field table, BreakerConfig, and config sources.

``BreakerConfig`` and ``FIELDS`` are part of the light core. Sources that need
optional packages (YAML files, etcd) are imported on first use.
"""

from __future__ import annotations

from resilient.config._fields import FIELDS, BreakerConfig, Field
from resilient.errors import ConfigError

__all__ = ["FIELDS", "BreakerConfig", "ConfigError", "Field"]
