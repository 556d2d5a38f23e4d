"""A real Prometheus server on a free loopback port, scraping the targets a test names.

One idea: the telemetry test asks the real thing what it makes of our
histograms. The server gets a generated config (one job, the given targets,
a short scrape interval), a storage directory of its own in the server's
temporary directory, and is ready when ``/-/ready`` answers 200. ``query()``
runs PromQL through the HTTP API (loopback only) and returns the result
vector; nothing from the answer is evaluated.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any, Final

from resilient.testing._binaries import which
from resilient.testing.servers import HOST, START_TIMEOUT, _Server

if TYPE_CHECKING:
    from mirakuru import Executor

__all__ = ["PrometheusServer"]

HINT: Final = "install Prometheus (apt-get install prometheus)"
QUERY_TIMEOUT: Final = 10.0  # seconds for one API request


class PrometheusServer(_Server):
    """``prometheus`` scraping ``targets`` (``host:port`` of ``/metrics`` endpoints).

    Args:
        targets: what to scrape.
        scrape_interval: seconds between scrapes.
        binary: the ``prometheus`` executable (looked up on PATH).
    """

    _name = "prometheus"

    def __init__(
        self,
        targets: Sequence[str],
        *,
        scrape_interval: float = 1.0,
        binary: str = "prometheus",
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        if not 0 < scrape_interval <= 60:
            raise ValueError(f"scrape_interval must be in (0, 60] seconds, got {scrape_interval!r}")
        self._binary = which(binary, HINT)
        super().__init__(start_timeout)
        self._targets = list(targets)
        self._interval = scrape_interval
        self._config = self._root / "prometheus.yml"
        self._data = self._root / "data"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _executor(self, log: IO[str]) -> Executor:
        from mirakuru import HTTPExecutor

        interval = f"{int(self._interval * 1000)}ms"
        config = {  # JSON is YAML: no YAML writer needed
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": "resilient",
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": self._targets}],
                }
            ],
        }
        self._config.write_text(json.dumps(config), encoding="utf-8")
        command = [
            self._binary,
            f"--config.file={self._config}",
            f"--storage.tsdb.path={self._data}",
            f"--web.listen-address={HOST}:{self.port}",
            "--log.level=warn",
        ]
        return HTTPExecutor(
            command,
            url=f"{self.url}/-/ready",
            method="GET",
            status=200,
            request_timeout=2.0,
            **self._executor_options(log),
        )

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """The result vector of an instant query (``at``: epoch seconds, default now).

        Raises:
            RuntimeError: Prometheus answered with an error (quoted).
        """
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=QUERY_TIMEOUT) as response:
                doc = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"Prometheus refused {promql!r}: {exc.read()[:500]!r}") from None
        if doc.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {promql!r}: {doc!r}"[:800])
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def scalar(self, promql: str) -> float | None:
        """The single value of ``promql`` (None when the vector is empty)."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) != 1:
            raise RuntimeError(f"{promql!r} gave {len(result)} series, not one")
        return float(result[0]["value"][1])

    def __repr__(self) -> str:
        return f"PrometheusServer(port={self.port}, targets={self._targets!r})"
