"""Breaker configuration: the field table, BreakerConfig, and config sources.

``BreakerConfig`` and ``FIELDS`` are part of the light core. Everything else
(``FileSource``, ``EtcdSource``, the schema helpers, the document type) is
loaded on first attribute access, so ``import resilient.config`` imports
neither ``jsonschema``, ``yaml`` nor ``aetcd``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from resilient.config._fields import FIELDS, BreakerConfig, Field
from resilient.errors import ConfigError

if TYPE_CHECKING:
    from resilient.config import document, etcd, file, schema
    from resilient.config._etcd_client import EtcdError
    from resilient.config.document import ConfigDocument
    from resilient.config.etcd import EtcdSource, PushConflict
    from resilient.config.file import FileSource
    from resilient.config.schema import (
        DocumentError,
        Problem,
        breaker_schema,
        document_schema,
        validate_document,
    )

__all__ = [
    "FIELDS",
    "BreakerConfig",
    "ConfigDocument",
    "ConfigError",
    "DocumentError",
    "EtcdError",
    "EtcdSource",
    "Field",
    "FileSource",
    "Problem",
    "PushConflict",
    "breaker_schema",
    "document",
    "document_schema",
    "etcd",
    "file",
    "schema",
    "validate_document",
]

_LAZY = {
    "FileSource": "resilient.config.file",
    "EtcdSource": "resilient.config.etcd",
    "PushConflict": "resilient.config.etcd",
    "EtcdError": "resilient.config._etcd_client",
    "ConfigDocument": "resilient.config.document",
    "DocumentError": "resilient.config.schema",
    "Problem": "resilient.config.schema",
    "breaker_schema": "resilient.config.schema",
    "document_schema": "resilient.config.schema",
    "validate_document": "resilient.config.schema",
}
_SUBMODULES = ("document", "etcd", "file", "schema")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value: Any = importlib.import_module(f"resilient.config.{name}")
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'resilient.config' has no attribute {name!r}")
    globals()[name] = value
    return value
