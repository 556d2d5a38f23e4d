"""``resilient config``: validate, push, get, watch and schema of breaker config.

One idea: the operator's door to the keys an ``EtcdSource`` watches, safe to
script. ``validate`` and ``push`` read a file of the shape ``{defaults: {...},
breakers: {name: {...}}}`` and check all of it first (exit 1, every problem
named by its key path); ``push`` makes the prefix equal to the file in one
etcd transaction guarded by the read it diffed against (exit 4 if etcd changed
in between, nothing written); ``--dry-run`` prints that diff, deletions
included, and writes nothing.

The etcd options of ``push``, ``get`` and ``watch`` come from one table
(``with_etcd``); each has an environment variable, and the password is read
from ``RESILIENT_ETCD_PASSWORD`` or a file, so it need not be on a command line.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from resilient.cli._exit import EXIT_CONFLICT, EXIT_INVALID, EXIT_UNREACHABLE, fail

if TYPE_CHECKING:
    from resilient.config.document import ConfigDocument, KeyChange
    from resilient.config.etcd import EtcdSource

__all__ = ["config_app"]

config_app = typer.Typer(
    help="Validate breaker config files, push them to etcd, read and watch it.",
    no_args_is_help=True,
)

F = TypeVar("F", bound=Callable[..., Any])

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
FileArg = Annotated[
    Path, typer.Argument(help="A YAML file (JSON if it ends in .json).", show_default=False)
]

# -- etcd options, shared by push, get and watch --------------------------------------------


def _param(name: str, default: Any, kind: Any, env: str, help_text: str) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    option = typer.Option(flag, envvar=env, help=help_text, show_envvar=True)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option]
    )


_ETCD_PARAMS = [
    _param("etcd", "http://127.0.0.1:2379", str, "RESILIENT_ETCD",
           "etcd endpoint(s), comma-separated; https:// for TLS."),
    _param("prefix", "/resilient", str, "RESILIENT_PREFIX",
           "Key prefix: <prefix>/defaults and <prefix>/breakers/<name>."),
    _param("user", None, str | None, "RESILIENT_ETCD_USER", "etcd user (or user:password)."),
    _param("password_file", None, Path | None, "RESILIENT_ETCD_PASSWORD_FILE",
           "File holding the etcd password (or set RESILIENT_ETCD_PASSWORD)."),
    _param("cacert", None, Path | None, "RESILIENT_ETCD_CACERT", "CA bundle (PEM) for TLS."),
    _param("cert", None, Path | None, "RESILIENT_ETCD_CERT", "Client certificate (PEM)."),
    _param("key", None, Path | None, "RESILIENT_ETCD_KEY", "The client certificate's key (PEM)."),
]  # fmt: skip
_ETCD_NAMES = [p.name for p in _ETCD_PARAMS]


@dataclass(frozen=True, slots=True)
class EtcdTarget:
    """The etcd options of one command, turned into an ``EtcdSource`` on demand."""

    etcd: str
    prefix: str
    user: str | None
    password_file: Path | None
    cacert: Path | None
    cert: Path | None
    key: Path | None

    def source(self, ctx: typer.Context) -> EtcdSource:
        """The source to talk through; ``ctx.obj["etcd_client_factory"]`` may swap the client."""
        from resilient.config.etcd import EtcdSource

        username, password = self.user, os.environ.get("RESILIENT_ETCD_PASSWORD")
        if username is not None and ":" in username:
            username, password = username.split(":", 1)
        if self.password_file is not None:
            try:
                password = self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise typer.BadParameter(
                    f"cannot read {self.password_file}: {exc.strerror or exc}",
                    param_hint="--password-file",
                ) from None
        if password is not None and username is None:
            raise typer.BadParameter("a password needs a user", param_hint="--user")
        factory = (ctx.obj or {}).get("etcd_client_factory") if isinstance(ctx.obj, dict) else None
        try:
            return EtcdSource(
                self.etcd,
                self.prefix,
                username=username,
                password=password,
                ca_cert=_str(self.cacert),
                cert_cert=_str(self.cert),
                cert_key=_str(self.key),
                client_factory=factory,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--etcd") from None


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def with_etcd(command: F) -> F:
    """Add the etcd options to a command, which receives them as ``target: EtcdTarget``."""
    signature = inspect.signature(command, eval_str=True)
    params = [p for p in signature.parameters.values() if p.name != "target"]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        target = EtcdTarget(**{name: kwargs.pop(name) for name in _ETCD_NAMES})
        return command(*args, target=target, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*params, *_ETCD_PARAMS])  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def _run(coro: Any, source: EtcdSource) -> Any:
    """Run one etcd conversation; an unreachable etcd is exit 3."""
    from resilient.config import EtcdError

    try:
        return asyncio.run(coro)
    except EtcdError as exc:
        if exc.code == "INVALID_ARGUMENT" and "too many operations" in str(exc):
            fail(EXIT_INVALID, f"etcd refused the transaction: {exc} (raise etcd's --max-txn-ops "
                               f"or split the file)")  # fmt: skip
        where = f"etcd {source.describe()} (prefix {source.prefix})"
        fail(EXIT_UNREACHABLE, f"{where} unreachable or refusing: {exc}")


# -- commands ---------------------------------------------------------------------------------


@config_app.command()
def schema() -> None:
    """Print the JSON Schema of a config file."""
    from resilient.config.schema import document_schema

    typer.echo(json.dumps(document_schema(), indent=2))


@config_app.command()
def validate(file: FileArg, json_out: JsonFlag = False) -> None:
    """Check a config file; every problem is printed with its key path (exit 1)."""
    doc = _load(file, json_out=json_out)
    if json_out:
        typer.echo(json.dumps({"file": str(file), "valid": True, "problems": []}))
        return
    defaults = "defaults and " if doc.defaults is not None else ""
    typer.echo(f"{file}: valid ({defaults}{len(doc.breakers)} breaker(s))")


@config_app.command()
@with_etcd
def push(
    ctx: typer.Context,
    file: FileArg,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the diff against etcd; write nothing.")
    ] = False,
    json_out: JsonFlag = False,
    *,
    target: EtcdTarget,
) -> None:
    """Make the etcd prefix hold exactly FILE, in one guarded transaction."""
    from resilient.config.etcd import PushConflict

    doc = _load(file, json_out=json_out)
    source = target.source(ctx)
    try:
        result = _run(source.push(doc, dry_run=dry_run), source)
    except PushConflict as exc:
        fail(EXIT_CONFLICT, f"push refused: {exc}")
    full = source.prefix + "/"
    if json_out:
        typer.echo(json.dumps({
            "prefix": source.prefix,
            "dry_run": dry_run,
            "read_revision": result.read_revision,
            "revision": result.revision,
            "changes": [
                {"key": full + c.key, "kind": c.kind, "old": c.old, "new": _plain(c.new)}
                for c in result.changes
            ],
        }))  # fmt: skip
        return
    for change in result.changes:
        typer.echo(_describe(full, change))
    n = len(result.changes)
    if not n:
        typer.echo(f"{source.prefix} already matches {file} (revision {result.read_revision})")
    elif dry_run:
        typer.echo(
            f"dry run: {n} change(s) against revision {result.read_revision}; nothing written"
        )
    else:
        typer.echo(f"pushed {n} change(s) to {source.prefix} at revision {result.revision}")


@config_app.command()
@with_etcd
def get(ctx: typer.Context, json_out: JsonFlag = False, *, target: EtcdTarget) -> None:
    """Print the config etcd holds now (YAML, or JSON with --json)."""
    source = target.source(ctx)
    snap = _run(source.snapshot(), source)
    for problem in snap.problems:
        key = source.prefix + "/" + problem.path[0]
        typer.echo(f"resilient: warning: {key} left out: {problem.message}", err=True)
    if json_out:
        typer.echo(snap.document.to_json())
    else:
        typer.echo(f"# {source.prefix} at etcd revision {snap.revision}")
        typer.echo(snap.document.to_yaml(), nl=False)


@config_app.command()
@with_etcd
def watch(
    ctx: typer.Context,
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="Stop after N changes.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="Stop after S seconds.")
    ] = None,
    json_out: JsonFlag = False,
    *,
    target: EtcdTarget,
) -> None:
    """Print changes under the prefix as they happen (one line each)."""
    source = target.source(ctx)
    _run(_watch(source, count, timeout, json_out=json_out), source)


async def _watch(
    source: EtcdSource, count: int | None, seconds: float | None, *, json_out: bool
) -> None:
    from resilient.config.document import decode_value
    from resilient.errors import ConfigError

    seen = 0
    try:
        async with asyncio.timeout(seconds):
            async for batch in source.watch():
                if batch.kind == "created":
                    typer.echo(
                        f"watching {source.prefix} after revision {batch.revision}", err=True
                    )
                    continue
                for change in batch.changes:
                    key = f"{source.prefix}/{change.key}"
                    value: Any = None
                    if change.value is not None:
                        try:
                            value = decode_value(change.value)
                        except ConfigError:
                            value = change.value.decode("utf-8", "replace")
                    typer.echo(
                        _watch_line(change.revision, key, value, change.value is None, json_out)
                    )
                    seen += 1
                    if count is not None and seen >= count:
                        return
    except TimeoutError:
        return


def _watch_line(revision: int, key: str, value: Any, deleted: bool, json_out: bool) -> str:
    kind = "delete" if deleted else "put"
    if json_out:
        return json.dumps({"revision": revision, "type": kind, "key": key, "value": value})
    if deleted:
        return f"{revision} delete {key}"
    shown = json.dumps(value, sort_keys=True) if isinstance(value, dict) else repr(value)
    return f"{revision} put {key} {shown}"


# -- helpers ----------------------------------------------------------------------------------


def _load(file: Path, *, json_out: bool) -> ConfigDocument:
    """Read and strictly validate a file, or exit 1 with every problem."""
    from resilient.config.document import load
    from resilient.config.schema import DocumentError
    from resilient.errors import ConfigError

    try:
        return load(file)
    except DocumentError as exc:
        problems = [p.to_dict() for p in exc.problems]
        if json_out:
            typer.echo(json.dumps({"file": str(file), "valid": False, "problems": problems}))
        for p in exc.problems:
            typer.echo(f"{file}: {p}", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    except ConfigError as exc:
        if json_out:
            problem = {"path": "", "message": str(exc)}
            typer.echo(json.dumps({"file": str(file), "valid": False, "problems": [problem]}))
        fail(EXIT_INVALID, str(exc))


def _plain(value: Mapping[str, Any] | str | None) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


def _describe(full: str, change: KeyChange) -> str:
    """One diff line: ``+ key {...}``, ``- key {...}`` or ``~ key: field old -> new; ...``."""
    key = full + change.key
    if change.kind == "add":
        return f"+ {key} {_json(change.new)}"
    if change.kind == "delete":
        return f"- {key} {_json(change.old)}"
    if not isinstance(change.old, Mapping):
        return f"~ {key}: {change.old!r} -> {_json(change.new)}"
    fields = "; ".join(
        f"{name} {_field(old)} -> {_field(new)}" for name, old, new in change.field_changes()
    )
    return f"~ {key}: {fields}"


def _json(value: Mapping[str, Any] | str | None) -> str:
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True)
    return repr(value)


def _field(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value)
