"""HTTP layer for aiohttp clients: session factory, timeouts and client middlewares."""
