"""The CLI shell and `resilient config` commands that need no server (exit codes, messages)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resilient.cli import EXIT_INVALID, EXIT_UNREACHABLE, EXIT_USAGE, app, main
from resilient.config import FIELDS

GOOD = """\
defaults:
  minimum_calls: 10
breakers:
  payments: {failure_rate_threshold: 0.25}
  api.example.com:443: {slow_call_duration: auto}
"""

BAD = """\
defaults:
  failure_rate_threshold: 0
breakers:
  payments:
    failur_rate_threshold: 0.2
  "bad name": {}
"""


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def write(tmp_path: Path, text: str, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- schema and validate ------------------------------------------------------------------------


def test_schema_prints_the_json_schema() -> None:
    code, out, _ = run("config", "schema")
    assert code == 0
    schema = json.loads(out)
    assert list(schema["$defs"]["breaker"]["properties"]) == [f.name for f in FIELDS]


def test_validate_a_good_file(tmp_path: Path) -> None:
    code, out, err = run("config", "validate", str(write(tmp_path, GOOD)))
    assert (code, err) == (0, "")
    assert out.strip().endswith("valid (defaults and 2 breaker(s))")
    code, out, _ = run("config", "validate", "--json", str(write(tmp_path, GOOD)))
    assert json.loads(out)["valid"] is True


def test_validate_names_every_problem_by_file_and_key_path(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    code, out, err = run("config", "validate", str(path))
    assert code == EXIT_INVALID and out == ""
    assert err.splitlines() == [
        f'{path}: breakers["bad name"]: invalid breaker name: use 1 to 200 letters, digits '
        "and . _ : / -",
        f"{path}: breakers.payments.failur_rate_threshold: unknown field "
        "(did you mean 'failure_rate_threshold'?)",
        f"{path}: defaults.failure_rate_threshold: must be > 0, got 0",
    ]


def test_validate_json_output_lists_the_problems(tmp_path: Path) -> None:
    code, out, _ = run("config", "validate", "--json", str(write(tmp_path, BAD)))
    assert code == EXIT_INVALID
    report = json.loads(out)
    assert report["valid"] is False
    assert [p["path"] for p in report["problems"]] == [
        'breakers["bad name"]',
        "breakers.payments.failur_rate_threshold",
        "defaults.failure_rate_threshold",
    ]


@pytest.mark.parametrize(
    ("text", "name", "words"),
    [
        ("defaults: [\n", "f.yaml", "invalid YAML"),
        ('{"defaults": {"buckets": NaN}}', "f.json", "NaN is not a number"),
        ("breakers:\n  a: {}\n  a: {}\n", "f.yaml", "duplicate key 'a'"),
    ],
)
def test_validate_unparsable_files(tmp_path: Path, text: str, name: str, words: str) -> None:
    code, _, err = run("config", "validate", str(write(tmp_path, text, name)))
    assert code == EXIT_INVALID
    assert err.startswith("resilient: error: ") and words in err


def test_validate_a_missing_file_is_invalid_input(tmp_path: Path) -> None:
    code, _, err = run("config", "validate", str(tmp_path / "nope.yaml"))
    assert code == EXIT_INVALID
    assert "cannot read" in err and "nope.yaml" in err


# -- usage and connection errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("config", "validate"),
        ("config", "validate", "--frobnicate", "x.yaml"),
        ("config", "get", "--etcd", "ftp://example"),
        ("config", "get", "--etcd", "http://127.0.0.1:2379/path"),
        ("config", "watch", "--count", "0"),
        ("config", "nope"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    code, out, err = run(*args)
    assert code == EXIT_USAGE
    assert out == "" and err


def test_a_password_without_a_user_is_a_usage_error(closed_port: int) -> None:
    env = {"RESILIENT_ETCD_PASSWORD": "pw"}
    code, _, err = run("config", "get", "--etcd", f"http://127.0.0.1:{closed_port}", env=env)
    assert code == EXIT_USAGE and "a password needs a user" in err


def test_a_bad_file_is_refused_before_etcd_is_contacted(tmp_path: Path, closed_port: int) -> None:
    path = write(tmp_path, BAD)
    code, _, err = run("config", "push", str(path), "--etcd", f"http://127.0.0.1:{closed_port}")
    assert code == EXIT_INVALID  # not 3: nothing was sent
    assert "defaults.failure_rate_threshold" in err


@pytest.mark.parametrize("command", ["get", "watch", "push"])
def test_an_unreachable_etcd_exits_3_naming_it_and_never_the_password(
    tmp_path: Path, closed_port: int, command: str
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port}"
    extra = [str(write(tmp_path, GOOD))] if command == "push" else []
    code, out, err = run(
        "config", command, *extra, "--etcd", endpoint, "--user", "root:hunter2-secret"
    )
    assert code == EXIT_UNREACHABLE
    assert endpoint in err and "(user root)" in err and "unreachable" in err
    assert "hunter2" not in out + err


def test_connection_settings_come_from_the_environment(closed_port: int) -> None:
    env = {"RESILIENT_ETCD": f"http://127.0.0.1:{closed_port}", "RESILIENT_PREFIX": "/from/env"}
    code, _, err = run("config", "get", env=env)
    assert code == EXIT_UNREACHABLE
    assert f"127.0.0.1:{closed_port}" in err and "/from/env" in err


def test_tls_files_need_an_https_endpoint(tmp_path: Path, closed_port: int) -> None:
    ca = write(tmp_path, "x", "ca.pem")
    code, _, err = run(
        "config", "get", "--etcd", f"http://127.0.0.1:{closed_port}", "--cacert", str(ca)
    )
    assert code == EXIT_USAGE and "use https://" in err


# -- the shell -------------------------------------------------------------------------------------


def test_main_returns_the_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "validate", str(write(tmp_path, GOOD))]) == 0
    assert main(["config", "validate", str(write(tmp_path, BAD))]) == EXIT_INVALID
    assert main(["--version"]) == 0
    assert "resilient " in capsys.readouterr().out


def test_demo_and_config_are_registered() -> None:
    code, out, _ = run("--help")
    assert code == 0
    assert "demo" in out and "config" in out
    code, out, _ = run("demo", "--help")
    assert code == 0 and "--duration" in out


def test_python_dash_m_resilient_is_the_cli_and_help_stays_light() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "resilient", "config", "schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0 and json.loads(done.stdout)["$defs"]
    code = (
        "import sys; from resilient.cli import main; main(['--help']); "
        "print(sorted(m for m in ('jsonschema', 'yaml', 'aetcd', 'grpc') if m in sys.modules), "
        "file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_the_example_config_is_valid() -> None:
    example = Path(__file__).parents[2] / "examples" / "config.yaml"
    code, out, err = run("config", "validate", str(example))
    assert (code, err) == (0, "") and "valid" in out
