"""``python -m resilient.demo``: the chaos demo with its defaults (as ``resilient demo``)."""

import sys

from resilient.demo import main

sys.exit(main())
