"""`resilient config push|get|watch` against a real etcd: what a shell script sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from resilient.cli import EXIT_CONFLICT, EXIT_INVALID, app
from resilient.config._etcd_client import AetcdClient, Connection, Endpoint, Range
from resilient.testing.servers import EtcdServer

P = "/cli/svc"

FLEET = """\
defaults:
  minimum_calls: 10
breakers:
  payments:
    failure_rate_threshold: 0.25
  api.example.com:443:
    slow_call_duration: auto
"""


def cli(server: EtcdServer, *args: str, obj: Any = None) -> tuple[int, str, str]:
    env = {"RESILIENT_ETCD": server.endpoint, "RESILIENT_PREFIX": P}
    result = CliRunner().invoke(app, list(args), env=env, obj=obj)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def etcd_keys(server: EtcdServer, prefix: str = P + "/") -> dict[str, Any]:
    out = server.etcdctl("get", "--prefix", prefix, "-w", "json")
    import base64

    kvs = json.loads(out).get("kvs", [])
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode() for kv in kvs
    }


def write(tmp_path: Path, text: str, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_push_get_round_trip_and_a_second_push_changes_nothing(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    path = write(tmp_path, FLEET)
    code, out, err = cli(etcd_server, "config", "push", str(path))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:3] == [
        f'+ {P}/breakers/api.example.com:443 {{"slow_call_duration": "auto"}}',
        f'+ {P}/breakers/payments {{"failure_rate_threshold": 0.25}}',
        f'+ {P}/defaults {{"minimum_calls": 10}}',
    ]
    assert lines[3].startswith(f"pushed 3 change(s) to {P} at revision ")
    assert json.loads(etcd_keys(etcd_server)[f"{P}/defaults"]) == {"minimum_calls": 10}

    code, out, _ = cli(etcd_server, "config", "get")
    assert code == 0
    assert out.startswith(f"# {P} at etcd revision ")
    assert yaml.safe_load(out) == yaml.safe_load(FLEET)
    code, out, _ = cli(etcd_server, "config", "get", "--json")
    assert json.loads(out) == yaml.safe_load(FLEET)

    code, out, _ = cli(etcd_server, "config", "push", str(path))
    assert code == 0 and out.startswith(f"{P} already matches {path}")


def test_dry_run_prints_the_diff_with_deletions_and_writes_nothing(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    etcd_server.etcdctl("put", f"{P}/breakers/old", '{"buckets": 3}')
    etcd_server.etcdctl("put", f"{P}/breakers/payments", '{"failure_rate_threshold": 0.5}')
    etcd_server.etcdctl("put", f"{P}/stray", "hello")
    before = etcd_keys(etcd_server)

    code, out, _ = cli(etcd_server, "config", "push", "--dry-run", str(write(tmp_path, FLEET)))
    assert code == 0
    assert out.splitlines() == [
        f'+ {P}/breakers/api.example.com:443 {{"slow_call_duration": "auto"}}',
        f'- {P}/breakers/old {{"buckets": 3}}',
        f"~ {P}/breakers/payments: failure_rate_threshold 0.5 -> 0.25",
        f'+ {P}/defaults {{"minimum_calls": 10}}',
        f"- {P}/stray 'hello'",
        out.splitlines()[-1],
    ]
    assert out.splitlines()[-1].startswith("dry run: 5 change(s) against revision ")
    assert out.splitlines()[-1].endswith("; nothing written")
    assert etcd_keys(etcd_server) == before

    code, out, _ = cli(
        etcd_server, "config", "push", "--dry-run", "--json", str(write(tmp_path, FLEET))
    )
    plan = json.loads(out)
    assert plan["dry_run"] is True and plan["revision"] is None
    kinds = {c["key"]: c["kind"] for c in plan["changes"]}
    assert kinds[f"{P}/breakers/old"] == "delete" and kinds[f"{P}/stray"] == "delete"


def test_an_invalid_file_is_refused_and_nothing_written(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    etcd_server.etcdctl("put", f"{P}/breakers/payments", '{"failure_rate_threshold": 0.5}')
    before = etcd_keys(etcd_server)
    bad = write(tmp_path, "breakers:\n  payments: {failure_rate_threshold: 2}\n")
    code, out, err = cli(etcd_server, "config", "push", str(bad))
    assert code == EXIT_INVALID and out == ""
    assert f"{bad}: breakers.payments.failure_rate_threshold: must be <= 1, got 2" in err
    assert etcd_keys(etcd_server) == before


class AfterReadClient(AetcdClient):
    """A real client; right after the push's read, ``then`` runs (another writer)."""

    def __init__(self, conn: Connection, endpoint: Endpoint, then: Callable[[], Any]) -> None:
        super().__init__(conn, endpoint=endpoint)
        self._then = then

    async def get_prefix(self, prefix: str) -> Range:
        got = await super().get_prefix(prefix)
        self._then()
        return got


def test_a_concurrent_push_is_refused_with_exit_4(etcd_server: EtcdServer, tmp_path: Path) -> None:
    mine, theirs = (
        write(tmp_path, FLEET, "mine.yaml"),
        write(tmp_path, "breakers: {x: {}}\n", "theirs.yaml"),
    )

    def their_push() -> None:  # a whole other CLI process pushes between our read and write
        env = {**os.environ, "RESILIENT_ETCD": etcd_server.endpoint, "RESILIENT_PREFIX": P}
        done = subprocess.run(
            [sys.executable, "-m", "resilient", "config", "push", str(theirs)],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    factory = {"etcd_client_factory": lambda c, e: AfterReadClient(c, e, their_push)}
    code, out, err = cli(etcd_server, "config", "push", str(mine), obj=factory)
    assert code == EXIT_CONFLICT and out == ""
    assert err.startswith("resilient: error: push refused: ")
    assert "nothing was written" in err
    assert set(etcd_keys(etcd_server)) == {f"{P}/breakers/x"}  # theirs, whole; not merged


def test_a_file_too_big_for_one_transaction_is_invalid_input_with_a_hint(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    big = write(tmp_path, "breakers:\n" + "".join(f"  b{i}: {{}}\n" for i in range(130)))
    code, _, err = cli(etcd_server, "config", "push", str(big))
    assert code == EXIT_INVALID
    assert "too many operations" in err and "--max-txn-ops" in err
    assert etcd_keys(etcd_server) == {}


def test_get_warns_about_keys_that_are_not_config(etcd_server: EtcdServer) -> None:
    etcd_server.etcdctl("put", f"{P}/breakers/ok", '{"buckets": 2}')
    etcd_server.etcdctl("put", f"{P}/breakers/broken", "{")
    etcd_server.etcdctl("put", f"{P}/misc", "{}")
    code, out, err = cli(etcd_server, "config", "get")
    assert code == 0
    assert yaml.safe_load(out) == {"breakers": {"ok": {"buckets": 2}}}
    assert f"{P}/breakers/broken left out: invalid JSON" in err
    assert f"{P}/misc left out: not a config key" in err


def test_watch_prints_changes_live_and_stops_after_count(etcd_server: EtcdServer) -> None:
    env = {**os.environ, "RESILIENT_ETCD": etcd_server.endpoint, "RESILIENT_PREFIX": P}
    command = [
        sys.executable,
        "-m",
        "resilient",
        "config",
        "watch",
        "--count",
        "3",
        "--timeout",
        "60",
        "--json",
    ]
    with subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stderr is not None and proc.stdout is not None
            ready = proc.stderr.readline()
            assert ready.startswith(f"watching {P} after revision "), ready
            etcd_server.etcdctl("put", f"{P}/breakers/a", '{"minimum_calls": 3}')
            etcd_server.etcdctl("put", "/cli/other", "x")  # not under the prefix
            etcd_server.etcdctl("put", f"{P}/breakers/a", "{oops")
            etcd_server.etcdctl("del", f"{P}/breakers/a")
            out = [json.loads(line) for line in proc.stdout]
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert [(e["type"], e["key"], e["value"]) for e in out] == [
        ("put", f"{P}/breakers/a", {"minimum_calls": 3}),
        ("put", f"{P}/breakers/a", "{oops"),
        ("delete", f"{P}/breakers/a", None),
    ]
    assert out[0]["revision"] < out[1]["revision"] < out[2]["revision"]


def test_watch_stops_at_its_timeout(etcd_server: EtcdServer) -> None:
    code, out, err = cli(etcd_server, "config", "watch", "--timeout", "0.5")
    assert code == 0 and out == ""
    assert err.startswith(f"watching {P} after revision ")


@pytest.mark.parametrize("args", [("config", "get"), ("config", "watch", "--timeout", "5")])
def test_a_killed_etcd_is_exit_3_for_scripts(
    etcd_server: EtcdServer, args: tuple[str, ...]
) -> None:
    etcd_server.kill()
    env = {**os.environ, "RESILIENT_ETCD": etcd_server.endpoint, "RESILIENT_PREFIX": P}
    done = subprocess.run(
        [sys.executable, "-m", "resilient", *args],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 3
    assert etcd_server.endpoint in done.stderr
