"""The demo's simulated recipients: people and machines that open, click and unsubscribe.

Each delivered message is handed to the persona of its lead, who acts through the daemon's
real tracking endpoints over HTTP, on the demo's accelerated clock:

| persona | what it does | what the engine should count |
| --- | --- | --- |
| reader | opens each message a few hours later, clicks its first link | human opens and clicks |
| gateway | a security gateway: HEAD and GET of every link on arrival | machine clicks (scanner) |
| privacy proxy | Apple Mail Privacy Protection: fetches the pixel on arrival | machine opens (privacy-proxy) |
| leaver | opens the welcome, then one-click unsubscribes from the next message | a human open, an unsubscribe |
| quiet | nothing | nothing |

What each persona did is counted here, so the demo can set it beside what the engine
recorded and show that the two agree.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from email.message import EmailMessage

import aiohttp

from mailer.clock import Clock

BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15"
GATEWAY = "Mozilla/5.0 (compatible; Proofpoint URL Defense)"
APPLE_MPP = "Mozilla/5.0"  # Apple's proxies send exactly this
READ_AFTER_SECONDS = 3 * 3600.0  # a person reads the message about three hours after it arrives

# Which lead behaves how: the demo's sample leads, by address.
PERSONAS = {
    "taro.yamada@example.jp": "reader",
    "hanako.suzuki@example.jp": "privacy proxy",
    "ken.sato@example.co.jp": "gateway",
    "alice.nguyen@example.com": "reader",
    "bob@startup.example": "leaver",
    "zoe@xn--bcher-kva.example": "quiet",
    "zoe@bücher.example": "quiet",
    "maria.garcia@example.es": "reader",
}

_PIXEL = re.compile(r'<img src="([^"]+/o/[^"]+)"')
_LINK = re.compile(r'<a [^>]*href="([^"]+/c/[^"]+\?u=[^"]+)"')
_UNSUBSCRIBE = re.compile(r"<(https?://[^>]+/u/[^>]+)>")


class Recipients:
    """Acts out each delivered message's persona; `idle()` tells when all are done."""

    def __init__(self, *, clock: Clock) -> None:
        self.clock = clock
        self.did: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._left: set[str] = set()

    async def __aenter__(self) -> Recipients:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.settle()
        if self._session is not None:
            await self._session.close()

    def idle(self) -> bool:
        return not self._tasks

    async def settle(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def received(self, email: str, step_id: str, message: EmailMessage) -> None:
        """A message arrived in `email`'s inbox: act it out in the background."""
        persona = PERSONAS.get(email.lower(), "quiet")
        task = asyncio.create_task(self._act(persona, email.lower(), step_id, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _act(self, persona: str, email: str, step_id: str, message: EmailMessage) -> None:
        body = message.get_body(("html",))
        html = body.get_content() if body is not None else ""
        pixel = _PIXEL.search(html)
        links = [link.replace("&amp;", "&") for link in _LINK.findall(html)]
        if persona == "gateway":
            for link in links:
                await self._request("HEAD", link, GATEWAY, "gateway HEAD")
                await self._request("GET", link, GATEWAY, "gateway click")
        elif persona == "privacy proxy" and pixel:
            await self._request("GET", pixel.group(1), APPLE_MPP, "proxy pixel fetch")
        elif persona == "reader":
            await self.clock.sleep(READ_AFTER_SECONDS)
            if pixel:
                await self._request("GET", pixel.group(1), BROWSER, "human open")
            if links:
                await self.clock.sleep(60)
                await self._request("GET", links[0], BROWSER, "human click")
        elif persona == "leaver" and email not in self._left:
            await self.clock.sleep(READ_AFTER_SECONDS)
            if pixel:
                await self._request("GET", pixel.group(1), BROWSER, "human open")
            unsubscribe = _UNSUBSCRIBE.search(str(message.get("List-Unsubscribe", "")))
            if step_id != "welcome" and unsubscribe:
                self._left.add(email)
                # RFC 8058: what a mailbox provider posts when its user clicks "unsubscribe".
                await self._request("POST", unsubscribe.group(1), BROWSER, "one-click unsubscribe", data={"List-Unsubscribe": "One-Click"})

    async def _request(self, method: str, url: str, agent: str, what: str, data: dict[str, str] | None = None) -> None:
        assert self._session is not None
        try:
            async with self._session.request(method, url, headers={"User-Agent": agent}, data=data, allow_redirects=False) as response:
                await response.read()
                if response.status < 400:
                    self.did[what] += 1
        except aiohttp.ClientError:
            self.did[f"{what} failed"] += 1
