"""The pricing service, stable or candidate.

    python -m examples.shadow.services stable|candidate

It binds a free loopback port, prints ``listening http://127.0.0.1:<port>``
and serves until SIGTERM:

- ``GET /quote/{sku}``: ``{"sku", "name", "price", "currency", "in_stock",
  "generated_at"}``. ``generated_at`` is the time of the answer, so two
  answers never agree on it: noise, which the shadow learns by asking the
  stable service twice.
- ``POST /orders/{order}`` (JSON ``{"sku", "qty"}``): stores the order in
  this service's own store and returns the row it stored.

The candidate has one regression: its new pricing code forgets the
clearance discount (every 8th SKU is on clearance at 30% off), so its
``price`` is wrong for those SKUs and right for the others.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import signal
from decimal import ROUND_HALF_UP, Decimal

from aiohttp import web

ORDERS = web.AppKey("orders", dict)


def list_price(sku: int) -> Decimal:
    """The list price of a SKU, in euros: 1.00 to 9.99, fixed per SKU."""
    return Decimal(100 + (sku * 37) % 900) / 100


def on_clearance(sku: int) -> bool:
    return sku % 8 == 0


def price(sku: int, *, candidate: bool) -> str:
    value = list_price(sku)
    if on_clearance(sku) and not candidate:  # the candidate's regression: no clearance discount
        value *= Decimal("0.7")
    return str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def build_app(version: str) -> web.Application:
    candidate = version == "candidate"

    async def quote(request: web.Request) -> web.Response:
        sku = int(request.match_info["sku"])
        return web.json_response(
            {
                "sku": sku,
                "name": f"item {sku}",
                "price": price(sku, candidate=candidate),
                "currency": "EUR",
                "in_stock": sku % 5 != 0,
                "generated_at": datetime.datetime.now(datetime.UTC).isoformat(),
            }
        )

    async def order(request: web.Request) -> web.Response:
        body = await request.json()
        row = {
            "order": request.match_info["order"],
            "sku": int(body["sku"]),
            "qty": int(body["qty"]),
            "status": "accepted",
        }
        request.app[ORDERS][row["order"]] = row
        return web.json_response(row, status=201)

    app = web.Application()
    app[ORDERS] = {}
    app.router.add_get("/quote/{sku:\\d+}", quote)
    app.router.add_post("/orders/{order}", order)
    return app


async def serve(version: str) -> None:
    runner = web.AppRunner(build_app(version), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening http://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", choices=["stable", "candidate"])
    asyncio.run(serve(parser.parse_args().version))
