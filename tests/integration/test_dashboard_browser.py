"""The dashboard page in a real headless Chromium, over a real fleet.

The dashboard is the real command (``python -m resilient dashboard``, a
child process on a free loopback port); the fleet is real ``RedisStore``
breakers on a real redis-server, in hubs of this process (each with its own
store, connection and loop thread, as separate processes would have). The
browser is the system Chromium through Selenium (``resilient.testing.browser``).

Waits are bounded and generous (a loaded CI box); the delay from a fleet
trip to the page is printed here and measured in bench/dashboard.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import pytest

from resilient import CircuitOpenError, Hub, State
from resilient.stores.redis import RedisStore
from resilient.testing.servers import RedisServer

CONFIG = {"minimum_calls": 5, "open_duration": 30.0, "window_size": 10, "buckets": 10}
TOKEN = "browser-test-token-1234"
BOUND = 20.0  # seconds for anything to show (a backstop on a loaded box, not the target)


class Boom(OSError):
    pass


def boom() -> None:
    raise Boom("down")


def fine() -> int:
    return 1


def trip(hub: Hub, name: str) -> None:
    br = hub.breaker(name)
    for _ in range(CONFIG["minimum_calls"] + 1):
        with suppress(Boom, CircuitOpenError):
            br(boom)()


def until(what: str, check: Callable[[], Any], bound: float = BOUND) -> Any:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {bound} s")


@pytest.fixture
def browser() -> Iterator[Any]:
    from system_tools import missing

    from resilient.testing.browser import Browser, MissingBinaryError

    try:
        session = Browser()
    except MissingBinaryError as exc:
        missing(exc)
    with session:
        yield session.driver


class Dashboard:
    """``resilient dashboard`` as a child process; ``url`` once it serves."""

    def __init__(self, redis_url: str, namespace: str, token: str | None = None) -> None:
        import port_for

        self.port = port_for.select_random()
        env = {**os.environ, "RESILIENT_REDIS": redis_url}
        if token is not None:
            env["RESILIENT_DASHBOARD_TOKEN"] = token  # not on the command line
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "resilient", "dashboard", "--port", str(self.port),
             "--namespace", namespace],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # the one line it prints when serving
        assert "resilient dashboard on" in line, line + self.proc.stderr.read()
        assert token is None or token not in line
        self.url = f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=BOUND)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stderr is not None
        self.log = self.proc.stderr.read()
        self.proc.stderr.close()


@pytest.fixture
def fleet(redis_server_session: RedisServer, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Two hubs of one namespace (two "processes"), and a way to start the dashboard."""
    namespace = f"browser-{request.node.name[:40]}"
    hubs = [
        Hub(
            namespace,
            store=RedisStore(redis_server_session.url, sync_interval=0.05),
            defaults=CONFIG,
        )
        for _ in range(2)
    ]
    dashboards: list[Dashboard] = []

    def dashboard(token: str | None = None) -> Dashboard:
        d = Dashboard(redis_server_session.url, namespace, token)
        dashboards.append(d)
        return d

    with hubs[0], hubs[1]:
        try:
            yield hubs, dashboard
        finally:
            for d in dashboards:
                d.close()
                assert TOKEN not in d.log


def row_state(driver: Any, name: str) -> str | None:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f'#breakers tr[data-name="{name}"]')
    return found[0].get_attribute("data-state") if found else None


def test_the_page_shows_a_fleet_trip(browser: Any, fleet: Any) -> None:
    from selenium.webdriver.common.by import By

    (a, b), dashboard = fleet
    a.breaker("search")(fine)()
    b.breaker("payments")(fine)()
    page = dashboard()
    browser.get(page.url)
    until(
        "the page lists both",
        lambda: row_state(browser, "search") and row_state(browser, "payments"),
    )
    assert row_state(browser, "payments") == "closed"
    until("the stream is live", lambda: browser.find_element(By.ID, "live").text == "live")
    tripped = time.monotonic()
    trip(a, "payments")  # one process trips the fleet
    until("payments shown open", lambda: row_state(browser, "payments") == "open")
    print(f"trip to page: {time.monotonic() - tripped:.3f} s")
    # the other process too: it hears the trip on its own connection, so wait for it
    until("open in the other process", lambda: b.breaker("payments").state is State.OPEN)
    rows = browser.find_elements(By.CSS_SELECTOR, "#breakers tbody tr")
    assert [r.get_attribute("data-name") for r in rows] == ["payments", "search"]  # worst first
    chips = {
        c.get_attribute("data-state"): c.text
        for c in browser.find_elements(By.CSS_SELECTOR, "#summary .chip")
    }
    assert chips["open"] == "1 open" and chips["closed"] == "1 closed"
    assert browser.title.startswith("(1 open)")
    browser.find_element(By.CSS_SELECTOR, '#breakers tr[data-name="payments"]').click()
    assert browser.find_element(By.ID, "detail-name").text == "payments"
    until(
        "the reason in the history",
        lambda: "failure rate" in browser.find_element(By.ID, "history").text,
    )
    assert "OPEN" in browser.find_element(By.ID, "history").text
    assert "payments" in browser.find_element(By.ID, "transitions").text
    assert browser.find_element(By.ID, "controls").is_displayed() is False  # read-only
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_a_thousand_breakers_stay_usable(browser: Any, fleet: Any) -> None:
    from selenium.webdriver.common.by import By

    (a, _), dashboard = fleet
    for i in range(1000):
        a.breaker(f"svc-{i:04d}")(fine)()
    page = dashboard()
    browser.get(page.url)
    count = 'return document.querySelectorAll("#breakers tbody tr").length'
    until("1,000 rows", lambda: browser.execute_script(count) == 1000)
    trip(a, "svc-0777")
    until("svc-0777 open", lambda: row_state(browser, "svc-0777") == "open")
    first = browser.find_element(By.CSS_SELECTOR, "#breakers tbody tr")
    assert first.get_attribute("data-name") == "svc-0777"  # the one in trouble is on top
    box = browser.find_element(By.ID, "filter")
    box.send_keys("svc-012")
    visible = (
        'return [...document.querySelectorAll("#breakers tbody tr")].filter(r => !r.hidden).length'
    )
    until("the filter narrows to ten", lambda: browser.execute_script(visible) == 10)
    assert browser.find_element(By.ID, "shown").text == "10 of 1000 breakers"


def test_a_control_click_with_the_token_forces_the_fleet_open(
    browser: Any, fleet: Any, redis_server_session: RedisServer
) -> None:
    import importlib

    from selenium.webdriver.common.by import By

    try:
        audit = importlib.import_module("resilient.stores._control").read_audit
    except ModuleNotFoundError:
        pytest.skip("no fleet-wide controls in this build (resilient.stores._control)")
    (a, b), dashboard = fleet
    a.breaker("payments")(fine)()
    b.breaker("payments")(fine)()
    page = dashboard(token=TOKEN)
    browser.get(page.url)
    until("payments listed", lambda: row_state(browser, "payments") == "closed")
    browser.find_element(By.CSS_SELECTOR, '#breakers tr[data-name="payments"]').click()
    assert browser.find_element(By.ID, "controls").is_displayed()
    result = browser.find_element(By.ID, "control-result")

    def click(token: str, action: str, reason: str) -> str:
        for field, text in (("token", token), ("reason", reason)):
            box = browser.find_element(By.ID, field)
            box.clear()
            box.send_keys(text)
        browser.find_element(By.ID, f"btn-{action}").click()
        return str(until(f"{action} answered", lambda: "…" not in result.text and result.text))

    # Without the right token: refused, and nothing changes anywhere.
    assert "refused (401)" in click("not-the-token", "force-open", "no")
    assert b.breaker("payments").state is State.CLOSED
    assert row_state(browser, "payments") == "closed"
    # With it: in force in every process of the fleet, on the page, and audited.
    assert "done" in click(TOKEN, "force-open", "INC-42 payments down")
    until("the other process forced open", lambda: b.breaker("payments").state is State.FORCED_OPEN)
    until("a's too", lambda: a.breaker("payments").state is State.FORCED_OPEN)
    with pytest.raises(CircuitOpenError):
        b.breaker("payments")(fine)()
    until("shown forced open", lambda: row_state(browser, "payments") == "forced_open")
    row = browser.find_element(By.CSS_SELECTOR, '#breakers tr[data-name="payments"]')
    until("the reason shown", lambda: "INC-42 payments down" in row.text)

    with redis_server_session.client(decode_responses=True) as client:
        last = audit(client, a.namespace)[-1].to_dict()  # (oldest first)
    assert last["breaker"] == "payments" and last["action"] == "force-open"
    assert last["reason"] == "INC-42 payments down" and last["actor"].startswith("dashboard@")
    assert "done" in click(TOKEN, "reset", "fixed")
    until("the other process closed again", lambda: b.breaker("payments").state is State.CLOSED)
