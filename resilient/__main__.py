"""``python -m resilient``: the same CLI as the ``resilient`` command."""

from resilient.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
