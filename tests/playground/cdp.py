"""A minimal Chrome DevTools Protocol driver for headless Debian Chromium, over aiohttp.

Enough for the playground's browser test: start Chromium with a fresh profile, open a page,
click at an element's position and type with real input events, wait for a condition in the
page (a MutationObserver promise, not a polling loop), and take a screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["Browser", "CdpError", "Page", "find_chromium"]

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


class CdpError(RuntimeError):
    pass


def find_chromium() -> str | None:
    """The Chromium binary: $CHROMIUM, else `chromium` on PATH, else /usr/bin/chromium."""
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


class Browser:
    """``async with Browser(binary, profile_dir) as browser: page = await browser.new_page()``."""

    def __init__(self, binary: str, profile_dir: Path) -> None:
        self.binary = binary
        self.profile_dir = profile_dir
        self.proc: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.stderr_tail: list[str] = []
        self._drainer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Browser:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self.profile_dir}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        url = await asyncio.wait_for(self._ws_url(), 60)
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(url, max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _ws_url(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                raise CdpError("chromium exited: " + " | ".join(self.stderr_tail[-10:]))
            text = line.decode(errors="replace").strip()
            self.stderr_tail.append(text)
            match = _LISTENING.search(text)
            if match:
                # Keep draining stderr so Chromium never blocks on a full pipe.
                self._drainer = asyncio.create_task(self._drain_stderr())
                return match.group(1)

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr_tail = [*self.stderr_tail[-50:], line.decode(errors="replace").strip()]

    async def __aexit__(self, *exc: object) -> None:
        for task in (self._reader, self._drainer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is None or future.done():
                continue
            if "error" in data:
                future.set_exception(CdpError(json.dumps(data["error"])))
            else:
                future.set_result(data.get("result", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CdpError("the DevTools connection closed"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> Any:
        assert self._ws is not None
        msg_id = next(self._ids)
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        await self._ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, 60)

    async def new_page(self, width: int = 1400, height: int = 900) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        await page.call("Page.enable")
        await page.call("Runtime.enable")
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        return page


class Page:
    """One tab, driven through a flattened CDP session."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.browser.send(method, params, session=self.session)

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete'")

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"page error in {expression[:80]!r}: {text}")
        return result.get("result", {}).get("value")

    async def wait_for(self, predicate_js: str, timeout: float = 30) -> Any:
        """Wait until the JS expression is truthy; re-checked on every DOM change.

        On timeout, raises with the page's text so the failure says what was shown.
        """
        script = f"""
            new Promise((resolve) => {{
              const check = () => {{
                let v = null;
                try {{ v = ({predicate_js}); }} catch (e) {{ return null; }}
                return v && typeof v === 'object' ? true : v;  // a DOM node: just "found"
              }};
              const first = check();
              if (first) {{ resolve(first); return; }}
              const obs = new MutationObserver(() => {{
                const v = check();
                if (v) {{ obs.disconnect(); clearTimeout(timer); resolve(v); }}
              }});
              obs.observe(document, {{subtree: true, childList: true, attributes: true,
                                      characterData: true}});
              const timer = setTimeout(() => {{ obs.disconnect(); resolve(null); }},
                                       {int(timeout * 1000)});
            }})
        """
        value = await self.evaluate(script)
        if not value:
            shown = await self.evaluate("document.body ? document.body.innerText : ''")
            raise TimeoutError(f"not true within {timeout}s: {predicate_js}\n--- page ---\n{shown}")
        return value

    async def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element (scrolled into view first)."""
        box = await self.evaluate(
            f"""(() => {{
                const el = document.querySelector({json.dumps(selector)});
                if (!el) return null;
                el.scrollIntoView({{block: 'center'}});
                const r = el.getBoundingClientRect();
                return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
            }})()"""
        )
        if not box:
            raise CdpError(f"no element {selector!r} to click")
        for kind in ("mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1},
            )

    async def type_text(self, selector: str, text: str) -> None:
        await self.click(selector)
        await self.call("Input.insertText", {"text": text})

    async def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            await self.call(
                "Input.dispatchKeyEvent",
                {
                    "type": kind,
                    "key": "Enter",
                    "code": "Enter",
                    "windowsVirtualKeyCode": 13,
                    **({"text": "\r"} if kind == "keyDown" else {}),
                },
            )

    async def set_files(self, selector: str, paths: list[Path]) -> None:
        """Choose files in an <input type=file>, as the file picker would (fires "change")."""
        doc = await self.call("DOM.getDocument", {"depth": 0})
        node = await self.call(
            "DOM.querySelector", {"nodeId": doc["root"]["nodeId"], "selector": selector}
        )
        if not node.get("nodeId"):
            raise CdpError(f"no element {selector!r}")
        await self.call(
            "DOM.setFileInputFiles",
            {"nodeId": node["nodeId"], "files": [str(p) for p in paths]},
        )

    async def screenshot(self, path: Path) -> None:
        data = await self.call("Page.captureScreenshot", {"format": "png"})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
