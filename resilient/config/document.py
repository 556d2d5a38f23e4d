"""The config document: its parsing, its keys, and how a breaker's config is merged.

One idea: a document is ``{defaults: {...}, breakers: {name: {...}}}`` (both
parts optional), and it has exactly one spelling as keys, shared by a file, a
push and etcd: ``defaults`` and ``breakers/<name>`` (relative to a prefix),
each holding a JSON object of BreakerConfig fields.

A breaker's config is layered, later layers winning field by field::

    BreakerConfig()  <  the hub's own defaults  <  document defaults  <  breakers[name]

The layers are merged *before* the config is built, so a combination that is
only valid with every layer applied (say ``open_duration`` raised in
``defaults`` and ``open_duration_max`` raised for one breaker) is accepted.

Parsing is safe: YAML through ``yaml.SafeLoader`` (a subclass that refuses
duplicate keys), JSON with NaN and Infinity refused. Nothing is ever
evaluated. ``yaml`` is imported only when YAML is parsed or written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from resilient.config._fields import BreakerConfig
from resilient.config.schema import DocumentError, Problem, is_valid_name, validate_document
from resilient.errors import ConfigError

if TYPE_CHECKING:
    import yaml

__all__ = [
    "BREAKERS_DIR",
    "DEFAULTS_KEY",
    "ConfigDocument",
    "KeyChange",
    "decode_value",
    "diff",
    "encode_value",
    "key_for",
    "load",
    "loads",
    "merge",
    "name_of",
    "parse",
]

DEFAULTS_KEY = "defaults"
BREAKERS_DIR = "breakers/"

Format = Literal["yaml", "json"]


# -- keys -----------------------------------------------------------------------------------


def key_for(name: str | None) -> str:
    """The relative key of a breaker's config (``None`` means the defaults)."""
    return DEFAULTS_KEY if name is None else BREAKERS_DIR + name


def name_of(key: str) -> str | None:
    """The breaker a relative key configures (``None`` for the defaults).

    Raises:
        ConfigError: the key is neither ``defaults`` nor ``breakers/<valid name>``.
    """
    if key == DEFAULTS_KEY:
        return None
    if key.startswith(BREAKERS_DIR):
        name = key[len(BREAKERS_DIR) :]
        if is_valid_name(name):
            return name
        raise ConfigError(
            f"invalid breaker name {name!r}: use 1 to 200 letters, digits and . _ : / -",
            value=name,
        )
    raise ConfigError(
        f"not a config key {key!r}: expected 'defaults' or 'breakers/<name>'", value=key
    )


# -- values -----------------------------------------------------------------------------------


def encode_value(fields: Mapping[str, Any]) -> bytes:
    """The canonical JSON of one config object: sorted keys, no spaces, no NaN."""
    return json.dumps(dict(fields), sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def decode_value(raw: bytes | str) -> dict[str, Any]:
    """Decode one etcd value: a JSON object, strictly.

    Raises:
        ConfigError: not UTF-8, not JSON, a duplicate key, NaN/Infinity, or not an object.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError("value is not UTF-8 text") from None
    data = _json_loads(raw)
    if not isinstance(data, dict):
        raise ConfigError(f"value must be a JSON object of fields, got {_json_kind(data)}")
    return data


def _json_loads(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ConfigError(f"invalid JSON: {name} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"invalid JSON: duplicate key {key!r}", field=key)
        out[key] = value
    return out


def _json_kind(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


# -- parsing ------------------------------------------------------------------------------


def parse(text: str | bytes, *, format: Format = "yaml", source: str | None = None) -> Any:
    """Parse a document's text into plain data (nothing is validated yet).

    YAML goes through a safe loader that refuses duplicate keys (a typo that
    would silently drop a breaker's settings); JSON refuses NaN and Infinity.
    An empty YAML file is an empty document.

    Raises:
        ConfigError: the text does not parse; the message says where.
    """
    where = f"{source}: " if source else ""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{where}not UTF-8 text") from None
    if format == "json":
        try:
            return _json_loads(text)
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc}", field=exc.field) from None
    import yaml

    try:
        data = yaml.load(text, Loader=_strict_loader())  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}invalid YAML: {_yaml_reason(exc)}") from None
    return {} if data is None else data


def _yaml_reason(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return str(problem)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"


_LOADER: Any = None


def _strict_loader() -> Any:
    """A ``yaml.SafeLoader`` subclass whose mappings refuse duplicate keys (built once)."""
    global _LOADER
    if _LOADER is None:
        import yaml

        class StrictSafeLoader(yaml.SafeLoader):
            def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # ``<<: *base`` may be overridden by the keys that follow
                    key = self.construct_object(key_node, deep=True)
                    try:
                        duplicate = key in seen
                    except TypeError:
                        continue  # unhashable: the base class reports it
                    if duplicate:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"found duplicate key {key!r}", key_node.start_mark,
                        )  # fmt: skip
                    seen.add(key)
                return super().construct_mapping(node, deep=deep)

        _LOADER = StrictSafeLoader
    return _LOADER


def format_of(path: str | Path) -> Format:
    """``json`` for ``*.json`` files, ``yaml`` for everything else."""
    return "json" if str(path).lower().endswith(".json") else "yaml"


def load(path: str | Path) -> ConfigDocument:
    """Read, parse and strictly validate a document file (what the CLI does).

    Raises:
        ConfigError: the file cannot be read or parsed.
        DocumentError: it parses but is invalid; ``.problems`` lists every reason.
    """
    return ConfigDocument.from_data(read(path), source=str(path))


def read(path: str | Path) -> Any:
    """Read and parse a document file into plain data (not validated).

    Raises:
        ConfigError: the file cannot be read or parsed.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse(raw, format=format_of(path), source=str(path))


def loads(
    text: str | bytes, *, format: Format = "yaml", source: str | None = None
) -> ConfigDocument:
    """Parse and strictly validate a document's text."""
    return ConfigDocument.from_data(parse(text, format=format, source=source), source=source)


# -- the document ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigDocument:
    """A config document: optional ``defaults`` and per-breaker overlays.

    Attributes:
        defaults: fields every breaker gets, or ``None`` when the document has none.
        breakers: breaker name to the fields that breaker overrides.

    Both are read-only views. Values are plain JSON data, not yet built into
    BreakerConfig: a running hub builds each breaker's config with its own
    defaults underneath (see ``merge``).
    """

    defaults: Mapping[str, Any] | None = None
    breakers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.defaults is not None:
            object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        frozen = {name: MappingProxyType(dict(v)) for name, v in self.breakers.items()}
        object.__setattr__(self, "breakers", MappingProxyType(frozen))

    @classmethod
    def from_data(cls, data: Any, *, source: str | None = None) -> ConfigDocument:
        """Validate parsed data strictly (unknown fields are errors) and wrap it.

        Raises:
            DocumentError: with every problem and its key path.
        """
        problems = validate_document(data)
        if problems:
            raise DocumentError(problems, source=source)
        return cls(data.get("defaults"), data.get("breakers") or {})

    @classmethod
    def from_data_lenient(cls, data: Any) -> tuple[ConfigDocument, list[Problem]]:
        """What a running process does with a file: keep every usable part.

        Only the structure is checked here; field values are left to the hub,
        which validates each breaker and keeps the last good config of one
        that is bad. A part that is not even a mapping is left out and listed
        in the returned problems (with the key it would have had).

        Raises:
            DocumentError: the document itself, or its ``breakers``, is not a mapping.
        """
        if not isinstance(data, Mapping):
            raise DocumentError([Problem((), "the document must be a mapping")])
        problems = [
            Problem((str(k),), "unknown top-level key, ignored")
            for k in data
            if k not in ("defaults", "breakers")
        ]
        defaults = data.get("defaults")
        if defaults is not None and not isinstance(defaults, Mapping):
            problems.append(Problem((DEFAULTS_KEY,), "must be a mapping of fields"))
            defaults = None
        section = data.get("breakers") or {}
        if not isinstance(section, Mapping):
            raise DocumentError([Problem(("breakers",), "must be a mapping of breaker names")])
        breakers: dict[str, Mapping[str, Any]] = {}
        for name, fields in section.items():
            if not is_valid_name(name):
                problems.append(Problem(("breakers", str(name)), "invalid breaker name"))
            elif not isinstance(fields, Mapping):
                problems.append(Problem(("breakers", name), "must be a mapping of fields"))
            else:
                breakers[name] = fields
        return cls(defaults, breakers), problems

    @classmethod
    def from_values(cls, values: Mapping[str, Mapping[str, Any]]) -> ConfigDocument:
        """Build a document from relative keys (``defaults``, ``breakers/<name>``)."""
        defaults = None
        breakers: dict[str, Mapping[str, Any]] = {}
        for key, fields in values.items():
            name = name_of(key)
            if name is None:
                defaults = fields
            else:
                breakers[name] = fields
        return cls(defaults, breakers)

    def to_values(self) -> dict[str, dict[str, Any]]:
        """The document as relative keys to JSON objects (what etcd holds)."""
        out: dict[str, dict[str, Any]] = {}
        if self.defaults is not None:
            out[DEFAULTS_KEY] = dict(self.defaults)
        for name in sorted(self.breakers):
            out[key_for(name)] = dict(self.breakers[name])
        return out

    def to_keys(self) -> dict[str, bytes]:
        """The document as relative keys to canonical JSON bytes (what a push writes)."""
        return {key: encode_value(value) for key, value in self.to_values().items()}

    def to_data(self) -> dict[str, Any]:
        """Plain data of the document's shape (for YAML or JSON output)."""
        out: dict[str, Any] = {}
        if self.defaults is not None:
            out["defaults"] = dict(self.defaults)
        if self.breakers:
            out["breakers"] = {n: dict(self.breakers[n]) for n in sorted(self.breakers)}
        return out

    def to_yaml(self) -> str:
        import yaml

        data = self.to_data()
        if not data:
            return "{}\n"
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_data(), indent=indent, allow_nan=False)

    def resolve(
        self,
        name: str,
        *,
        base: BreakerConfig | None = None,
        unknown: Literal["error", "ignore"] = "ignore",
    ) -> BreakerConfig:
        """The config breaker ``name`` gets from this document, over ``base``."""
        return merge(base, self.defaults, self.breakers.get(name), unknown=unknown)


def merge(
    base: BreakerConfig | None,
    defaults: Mapping[str, Any] | None,
    own: Mapping[str, Any] | None,
    *,
    unknown: Literal["error", "ignore"] = "ignore",
) -> BreakerConfig:
    """Layer ``defaults`` then ``own`` over ``base`` (``BreakerConfig()`` if None).

    The layers are merged into one mapping first and the config built once,
    so cross-field rules are judged on the final result only.

    Raises:
        ConfigError: the merged config is invalid (naming the field).
    """
    merged = {**(defaults or {}), **(own or {})}
    return BreakerConfig.from_mapping(merged, base=base, unknown=unknown)


# -- diff -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyChange:
    """One relative key a push adds, changes or deletes.

    ``old`` and ``new`` are the decoded objects (``old`` is the raw text when
    what etcd holds is not a JSON object; ``None`` means absent).
    """

    key: str
    old: Mapping[str, Any] | str | None
    new: Mapping[str, Any] | None

    @property
    def kind(self) -> Literal["add", "change", "delete"]:
        if self.old is None:
            return "add"
        return "delete" if self.new is None else "change"

    def field_changes(self) -> list[tuple[str, Any, Any]]:
        """``(field, old, new)`` for each field that differs (``None`` = absent)."""
        old = self.old if isinstance(self.old, Mapping) else {}
        new = self.new or {}
        return [
            (f, old.get(f), new.get(f))
            for f in sorted(set(old) | set(new), key=str)
            if not _same(old.get(f, _ABSENT), new.get(f, _ABSENT))
        ]


_ABSENT = object()


def _same(a: object, b: object) -> bool:
    """Equal as JSON values: ``1 == 1.0``, but ``true`` is not ``1``."""
    if a is _ABSENT or b is _ABSENT:
        return a is b
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def diff(current: Mapping[str, bytes], desired: Mapping[str, bytes]) -> list[KeyChange]:
    """What turns ``current`` into ``desired`` (relative keys to raw values), by key.

    Values are compared as decoded JSON, so a value written by hand with
    other spacing or key order is not rewritten.
    """
    changes = []
    for key in sorted(set(current) | set(desired)):
        old_raw, new_raw = current.get(key), desired.get(key)
        old = None if old_raw is None else _decoded_or_text(old_raw)
        new = None if new_raw is None else decode_value(new_raw)
        if old is not None and new is not None and _same_object(old, new):
            continue
        changes.append(KeyChange(key, old, new))
    return changes


def _decoded_or_text(raw: bytes) -> Mapping[str, Any] | str:
    try:
        return decode_value(raw)
    except ConfigError:
        return raw.decode("utf-8", errors="replace")


def _same_object(old: Mapping[str, Any] | str, new: Mapping[str, Any]) -> bool:
    if isinstance(old, str) or set(old) != set(new):
        return False
    return all(_same(old[k], new[k]) for k in old)
