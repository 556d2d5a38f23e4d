"""A real headless Chromium, driven by Selenium, for tests of the dashboard page.

One idea: the system's Chromium (Debian ``chromium`` + ``chromium-driver``),
started so that it talks to nothing but the loopback pages a test opens: no
first-run, sync, component updates, background networking or QUIC, a fresh
profile directory deleted on close, and the driver named by path so that
Selenium never looks for (or downloads) one of its own.

``quit()`` ends the browser and its helper processes; ``close()`` then waits
for them (by PID, the ones this browser started) so that a test leaves no
process behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

from resilient.testing._binaries import MissingBinaryError, which
from resilient.testing.servers import _Managed

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

__all__ = ["HINT", "Browser", "MissingBinaryError"]

HINT: Final = "install Chromium and its driver (apt-get install chromium chromium-driver)"
FLAGS: Final = (
    "--headless",
    "--no-sandbox",  # tests run as root in containers, where the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)
EXIT_WAIT: Final = 10.0  # seconds for the browser's processes to end after quit


class Browser(_Managed):
    """A headless Chromium with a fresh profile; ``driver`` is the Selenium WebDriver.

    Raises:
        MissingBinaryError: ``chromium`` or ``chromedriver`` is not installed.
    """

    def __init__(self, *, binary: str = "chromium", driver: str = "chromedriver") -> None:
        self._binary = which(binary, HINT)
        self._driver_path = which(driver, HINT)
        self._profile = Path(tempfile.mkdtemp(prefix="resilient-chromium-"))
        self._driver: WebDriver | None = None
        self._root_pid: int | None = None

    @property
    def driver(self) -> WebDriver:
        if self._driver is None:
            raise RuntimeError("the browser is not started (use it as a context manager)")
        return self._driver

    def start(self) -> Self:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = self._binary
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self._profile}")
        service = Service(executable_path=self._driver_path, env={**os.environ})
        self._driver = webdriver.Chrome(options=options, service=service)
        process = service.process
        self._root_pid = None if process is None else process.pid
        return self

    def close(self) -> None:
        import psutil  # type: ignore[import-untyped, unused-ignore]

        driver, self._driver = self._driver, None
        alive: list[psutil.Process] = []
        if self._root_pid is not None:  # the driver and the browser it started, now
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(self._root_pid)
                alive = [root, *root.children(recursive=True)]
        try:
            if driver is not None:
                driver.quit()
        finally:
            _, left = psutil.wait_procs(alive, timeout=EXIT_WAIT)
            for proc in left:  # ours, by PID: a browser that would not quit
                proc.kill()
            psutil.wait_procs(left, timeout=EXIT_WAIT)
            shutil.rmtree(self._profile, ignore_errors=True)

    def __repr__(self) -> str:
        return f"Browser({self._binary!r}, running={self._driver is not None})"
