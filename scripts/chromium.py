"""Open an HTML file in headless Chromium over the DevTools protocol: wait for it to load, collect
console errors, evaluate JavaScript, take a screenshot. The report tests use it, and so does
refreshing the README's screenshot:

    .venv/bin/python scripts/chromium.py models/RUN/evaluation/report.html docs/report.png --height 1500
    .venv/bin/python scripts/chromium.py models/RUN/evaluation/report.html docs/report_gradcam.png \
        --start '#where-the-model-looked-grad-cam' --height 1100
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import tempfile
import threading
import urllib.request
from pathlib import Path

import websocket

# A fresh, quiet browser: no GPU, no sandbox (root in containers), nothing fetched in the background.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--remote-debugging-port=0")
BINARIES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, BINARIES) if path), None)


class Browser:
    """One headless Chromium with one page; use as a context manager.

    Console errors, uncaught exceptions and failed loads of the page land in `errors`.
    """

    def __init__(self, binary: str, width: int = 1280, height: int = 900, timeout: float = 60) -> None:
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}",
                                         f"--window-size={width},{height}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self.errors: list[str] = []
        self._next_id, self._loads = 0, set()
        try:
            endpoint = self._devtools_endpoint()
            request = urllib.request.Request(f"http://{endpoint}/json/new?about:blank", method="PUT")
            with urllib.request.urlopen(request, timeout=timeout) as response:
                page = json.load(response)
            self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout,
                                                      suppress_origin=True)
            for domain in ("Runtime", "Log", "Page"):
                self.call(f"{domain}.enable")
            self.call("Page.setLifecycleEventsEnabled", enabled=True)
            self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                      mobile=False)
        except BaseException:
            self._stop()
            raise

    def _devtools_endpoint(self) -> str:
        """host:port from Chromium's "DevTools listening on ws://HOST:PORT/..." line; stderr is then
        drained in the background so that the browser never blocks on a full pipe."""
        for line in self.process.stderr:
            self.log.append(line)
            if line.startswith("DevTools listening on ws://"):
                threading.Thread(target=lambda: self.log.extend(self.process.stderr), daemon=True).start()
                return line.split("ws://", 1)[1].split("/", 1)[0]
        raise RuntimeError(f"chromium exited ({self.process.wait()}) before DevTools started: {''.join(self.log)}")

    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(f"{params['entry']['text']} {params['entry'].get('url', '')}".strip())
        elif method == "Page.lifecycleEvent" and params["name"] == "load":
            self._loads.add(params["loaderId"])

    def _receive(self) -> dict:
        message = json.loads(self.socket.recv())
        if "method" in message:
            self._event(message)
        return message

    def call(self, method: str, **params) -> dict:
        """Send one DevTools command and return its result (events that arrive meanwhile are kept)."""
        self._next_id += 1
        self.socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = self._receive()
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def open(self, path: str | Path) -> None:
        """Load a file and wait for its load event (every image and script done)."""
        result = self.call("Page.navigate", url=Path(path).resolve().as_uri())
        if result.get("errorText"):
            raise RuntimeError(f"{path}: {result['errorText']}")
        while result["loaderId"] not in self._loads:
            self._receive()

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def screenshot(self, path: str | Path, max_height: int | None = None, start: str | None = None) -> bytes:
        """A PNG of the whole page, from the element matching CSS selector `start` if given, at most
        `max_height` CSS pixels tall; also written to `path`."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        top = 0 if start is None else self.evaluate(
            f"document.querySelector({json.dumps(start)}).getBoundingClientRect().top + window.scrollY")
        height = min(size["height"] - top, max_height or size["height"])
        clip = {"x": 0, "y": top, "width": size["width"], "height": height, "scale": 1}
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png", clip=clip,
                                         captureBeyondViewport=True)["data"])
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(png)
        return png

    def _stop(self) -> None:
        self.process.terminate()
        self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def close(self) -> None:
        self.socket.close()
        self._stop()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=None, help="keep the top HEIGHT pixels only")
    parser.add_argument("--start", default=None, help="CSS selector of the element to start from, e.g. '#metrics'")
    args = parser.parse_args()
    binary = find_chromium()
    if binary is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    with Browser(binary, width=args.width) as browser:
        browser.open(args.html)
        browser.screenshot(args.png, args.height, args.start)
        for error in browser.errors:
            print(f"console error: {error}")


if __name__ == "__main__":
    main()
