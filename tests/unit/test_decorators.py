"""The decorators are generated from the guard's core: the file must be what the script writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_decorators.py"


def test_decorators_are_generated_from_the_guard() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_check_sees_a_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gen_decorators
    finally:
        sys.path.remove(str(SCRIPT.parent))
    copy = tmp_path / "_decorators.py"
    monkeypatch.setattr(gen_decorators, "TARGET", copy)
    text = (ROOT / "resilient" / "_decorators.py").read_text()
    copy.write_text(text)
    assert gen_decorators.main(["--check"]) == 0
    copy.write_text(text.replace("flight.counts[ticket % RING] -= 1", "pass", 1))
    assert gen_decorators.main(["--check"]) == 1


def test_the_decorators_hold_the_success_path_inline() -> None:
    """No call of the core on the success path: it is pasted in (the point of generating)."""
    text = (ROOT / "resilient" / "_decorators.py").read_text()
    assert "self._begin(" not in text and "self._end(" not in text
    assert text.count("flight.counts[ticket % RING] += 1") == 2  # async and sync
