"""Drive headless Chromium through chromedriver's W3C WebDriver HTTP API (httpx, no extra dependency), for the
tests that need what `--dump-dom` cannot do: a click, the page's cookies, a script's result."""

from __future__ import annotations

import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

CHROMEDRIVER = shutil.which("chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference


class Browser:
    def __init__(self, client: httpx.Client, session: str):
        self.client = client
        self.session = session

    def _call(self, method: str, path: str, body: dict | None = None):
        response = self.client.request(method, f"/session/{self.session}{path}", json=body)
        assert response.status_code == 200, response.text[:2000]
        return response.json()["value"]

    def open(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    @property
    def url(self) -> str:
        return self._call("GET", "/url")

    def cookies(self) -> list[dict]:
        return self._call("GET", "/cookie")

    def run(self, script: str, *args):
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def click(self, css: str) -> None:
        found = self._call("POST", "/element", {"using": "css selector", "value": css})
        assert ELEMENT in found, found
        element = found[ELEMENT]
        self._call("POST", f"/element/{element}/click", {})

    def send_keys(self, css: str, text: str) -> None:
        """Type into an element as a user would (W3C key codes: CONTROL + ENTER = "\ue009\ue007")."""
        found = self._call("POST", "/element", {"using": "css selector", "value": css})
        assert ELEMENT in found, found
        self._call("POST", f"/element/{found[ELEMENT]}/value", {"text": text})

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))

    def wait_for(self, script: str, timeout: float = 30.0):
        """The script's result once it is truthy."""
        deadline = time.monotonic() + timeout
        while not (value := self.run(script)):
            if time.monotonic() > deadline:
                raise AssertionError(f"still falsy after {timeout}s: {script}")
            time.sleep(0.1)
        return value


@contextmanager
def chromium_session(chromium: str, flags: tuple[str, ...], profile: Path, port: int):
    """A headless Chromium under chromedriver on 127.0.0.1:port; both stopped on exit."""
    driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}", "--allowed-ips=127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=90) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get("/status").json()["value"]["ready"]:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "chromedriver did not start in 30s"
                time.sleep(0.1)
            options = {"binary": chromium, "args": [*flags, f"--user-data-dir={profile}"]}
            created = client.post("/session", json={"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}})
            assert created.status_code == 200, created.text[:2000]
            session = created.json()["value"]["sessionId"]
            try:
                yield Browser(client, session)
            finally:
                client.delete(f"/session/{session}")
    finally:
        driver.terminate()
        try:
            driver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()
