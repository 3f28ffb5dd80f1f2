"""The demo's simulated world: recipients (people and machines) and the CRM that gets webhooks.

Each delivered message is handed to the persona of its lead, who acts through the daemon's
real tracking endpoints over HTTP, on the demo's accelerated clock:

| persona | what it does | what the engine should count |
| --- | --- | --- |
| reader | opens each message a few hours later, clicks its call to action (the button) | human opens and clicks |
| skimmer | opens each message a few hours later, clicks only in the first two it gets | human opens, fewer clicks |
| gateway | a security gateway: HEAD and GET of every link on arrival | machine clicks (scanner) |
| privacy proxy | Apple Mail Privacy Protection: fetches the pixel on arrival | machine opens (privacy-proxy) |
| leaver | opens the welcome, then one-click unsubscribes from the next message | a human open, an unsubscribe |
| quiet | nothing | nothing |

The CRM (`CrmReceiver`) is a webhook receiver on loopback that checks each call's
Mailer-Signature with `mailer.webhooks.verify`, as a real receiver would.

What each persona did is counted here, so the demo can set it beside what the engine
recorded and show that the two agree. The buttons carry the `data-tag`s that
scenarios/scoring.yaml rewards (case-study, webinar, pricing): readers with a good title
become MQL by the webinar, and the three skimmers of one company, none of them an MQL, add
up to an MQA.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiohttp
from aiohttp import web

from mailer.clock import Clock
from mailer.webhooks import SIGNATURE_HEADER, verify

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
    "yui.tanaka@hikari-retail.example": "skimmer",
    "shun.kobayashi@hikari-retail.example": "skimmer",
    "emma.wood@hikari-retail.example": "skimmer",
}
SKIMMER_CLICKS = 2  # a skimmer clicks in the first this many messages it gets, then only opens

_PIXEL = re.compile(r'<img src="([^"]+/o/[^"]+)"')
_LINK = re.compile(r'<a [^>]*href="([^"]+/c/[^"]+\?u=[^"]+)"')
_BUTTON = re.compile(r'<a [^>]*class="button"[^>]*href="([^"]+/c/[^"]+\?u=[^"]+)"')
_UNSUBSCRIBE = re.compile(r"<(https?://[^>]+/u/[^>]+)>")


class Recipients:
    """Acts out each delivered message's persona; `idle()` tells when all are done."""

    def __init__(self, *, clock: Clock) -> None:
        self.clock = clock
        self.did: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._left: set[str] = set()
        self._clicked: Counter[str] = Counter()  # messages a skimmer clicked in, by address

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
        # a person clicks the button the message is about, not the logo in its header
        button = _BUTTON.search(html)
        call_to_action = button.group(1).replace("&amp;", "&") if button else (links[0] if links else None)
        if persona == "gateway":
            for link in links:
                await self._request("HEAD", link, GATEWAY, "gateway HEAD")
                await self._request("GET", link, GATEWAY, "gateway click")
        elif persona == "privacy proxy" and pixel:
            await self._request("GET", pixel.group(1), APPLE_MPP, "proxy pixel fetch")
        elif persona in ("reader", "skimmer"):
            clicks = persona == "reader" or self._clicked[email] < SKIMMER_CLICKS
            if clicks:
                self._clicked[email] += 1
            await self.clock.sleep(READ_AFTER_SECONDS)
            if pixel:
                await self._request("GET", pixel.group(1), BROWSER, "human open")
            if clicks and call_to_action:
                await self.clock.sleep(60)
                await self._request("GET", call_to_action, BROWSER, "human click")
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


@dataclass(frozen=True)
class WebhookCall:
    """One call the CRM received: the raw body, its signature header and whether it verified."""

    body: bytes
    signature: str
    verified: bool

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class CrmReceiver:
    """A CRM's webhook endpoint on 127.0.0.1 (any free port): keeps every call, answers 401 to a bad signature."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.calls: list[WebhookCall] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> CrmReceiver:
        app = web.Application()
        app.add_routes([web.post("/hook", self._hook)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers.get(SIGNATURE_HEADER, "")
        # the receiver's own clock: `t` is real Unix time even when the daemon's clock runs fast
        verified = verify(self.secret.encode(), body, signature, now=int(time.time()))
        self.calls.append(WebhookCall(body, signature, verified))
        return web.Response(text="ok") if verified else web.Response(status=401, text="bad signature")
