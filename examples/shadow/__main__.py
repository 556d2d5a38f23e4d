"""``python -m examples.shadow``: see ``examples/shadow/run.py``."""

import sys

from examples.shadow.run import main

if __name__ == "__main__":
    sys.exit(main())
