"""Shadow a candidate service behind a Starlette front, then let ``resilient reconcile`` judge it.

    python -m examples.shadow            # about 5 s; prints the report, exits as the gate says

Three processes on free loopback ports (``run.py`` starts and stops them):

- ``services.py stable``: the pricing service in production (aiohttp);
- ``services.py candidate``: its next version, with one real regression
  (it forgets the clearance discount: ``$.body.price`` is wrong for every
  8th SKU) and, like the stable one, a ``generated_at`` timestamp that
  differs on every answer;
- ``front.py``: a Starlette front calling the stable service through
  ``resilient.http.session(shadow=HttpShadow(candidate))``, and dual-writing
  each order to both services' stores with ``record_write``.

See docs/guides/shadow.md.
"""
