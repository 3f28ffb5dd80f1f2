"""The tracking server: open pixel, click redirect, unsubscribe, opt-in (aiohttp.web).

It runs inside `mailer serve`, on the daemon's event loop, and serves recipients only: no
admin surface. Routes:

| route | answer |
| --- | --- |
| `GET /healthz` | 200 JSON: ok, events waiting, written, dropped |
| `GET|HEAD /o/<token>` | always the 1x1 GIF; a genuine token queues one open |
| `GET|HEAD /c/<token>?u=URL` | genuine: 302 to exactly the signed URL and one click; else 404 |
| `GET|HEAD /c/<token>` | the honeypot: 200 and a machine click |
| `GET /u/<token>` | a page to choose this list or everything; never unsubscribes |
| `POST /u/<token>` | `List-Unsubscribe=One-Click` (RFC 8058) or the page's form: unsubscribes now |
| `POST /subscribe` | the lead-capture form: honeypot field, per-IP rate limit, double opt-in |
| `GET|POST /confirm/<token>` | confirms a subscription; a machine's GET only gets a button |

Opens and clicks are judged by `mailer.machine` and queued (`mailer.eventqueue`): the pixel
and click handlers never wait for the database. Unsubscribes and confirmations are consent
changes: they are committed before the answer goes out.

Every visitor address used here (machine judgement by network, the /subscribe limit, consent
evidence, events' "ip") is `_client_address`: the peer's, or behind a proxy named in
`[tracking] trusted_proxies` the client from its X-Forwarded-For (`mailer.clientaddress`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from urllib.parse import quote

from aiohttp import web
from email_validator import EmailNotValidError, validate_email

from mailer import webpages
from mailer.clientaddress import TrustedProxies
from mailer.clock import Clock
from mailer.config import Config, binding, listen_address
from mailer.eventqueue import EventQueue
from mailer.links import Links
from mailer.machine import ALL_LINKS_SECONDS, RecentClick, Verdict, is_machine_request, judge_click, judge_open
from mailer.mime import make_message_id
from mailer.store import Reclassification, Store, TrackingEvent

log = logging.getLogger("mailer.tracking")

# The smallest transparent GIF: 1x1, one-colour palette, one transparent pixel (43 bytes).
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
# Every open must reach us: no cache may keep the pixel (RFC 9111 5.2.2; Pragma and
# Expires for HTTP/1.0 caches, RFC 9111 5.4 and 5.3).
PIXEL_HEADERS = {
    "Content-Type": "image/gif",
    "Cache-Control": "no-store, no-cache, must-revalidate, private",
    "Pragma": "no-cache",
    "Expires": "0",
}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the page's URL carries a token
    "Cache-Control": "no-store",
}
MAX_BODY = 64 * 1024  # a form post is a few hundred bytes
MAX_USER_AGENT = 512  # kept as evidence; longer ones are cut
RECENT_MESSAGES = 10_000  # messages whose last clicks are remembered for the all-links rule
RECENT_PER_MESSAGE = 32
# RFC 5321 4.5.3.1.3: a path is at most 256 octets with its angle brackets.
MAX_EMAIL = 254
MAX_FIELD = 2_000
# URL characters a Location header may carry as they are (RFC 3986 2.2 reserved, 2.3
# unreserved, and "%" of escapes already there); anything else is percent-encoded (RFC 3987 3.1).
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~-._"


class RateLimit:
    """At most `limit` hits per key in any hour (sliding window), for `limit` keys or fewer."""

    def __init__(self, limit: int, *, window: float = 3600.0, keys: int = 10_000) -> None:
        self.limit, self.window, self.keys = limit, window, keys
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        hits = self._hits.pop(key, None) or deque()
        while hits and now - hits[0] >= self.window:
            hits.popleft()
        allowed = len(hits) < self.limit
        if allowed:
            hits.append(now)
        self._hits[key] = hits
        if len(self._hits) > self.keys:
            self._hits.popitem(last=False)
        return allowed


class TrackingServer:
    def __init__(self, *, config: Config, store: Store, links: Links, clock: Clock) -> None:
        self.config = config
        self.store = store
        self.links = links
        self.clock = clock
        tracking = config.tracking
        self.on_message_queued: Callable[[], None] | None = None  # set by the daemon to wake its loop
        self.host, self.port = listen_address(tracking.listen, field="tracking.listen", example="127.0.0.1:8080")
        self.queue = EventQueue(store, size=tracking.queue_size, flush_seconds=tracking.flush_seconds)
        self.opens = 0  # genuine pixel requests answered (each queued one event)
        self.clicks = 0  # genuine click and honeypot requests answered
        self._recent: OrderedDict[int, list[RecentClick]] = OrderedDict()
        self._subscribe_limit = RateLimit(tracking.subscribe_per_hour)
        # None when no proxy is trusted: X-Forwarded-For then costs the pixel one `is None` check
        self._proxies = TrustedProxies(tracking.trusted_proxies) if tracking.trusted_proxies else None
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.add_routes(
            [
                web.get("/healthz", self._healthz),
                web.get("/o/{token}", self._open),
                web.get("/c/{token}", self._click),
                web.get("/u/{token}", self._unsubscribe_page),
                web.post("/u/{token}", self._unsubscribe),
                web.post("/subscribe", self._subscribe),
                web.get("/confirm/{token}", self._confirm),
                web.post("/confirm/{token}", self._confirm),
            ]
        )

    async def start(self) -> None:
        await self.queue.start()
        # no access log: recipients' addresses stay out of the logs, and it costs a third of the pixel's time
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        with binding(self.config.tracking.listen, field="tracking.listen", file=self.config.path):
            try:
                await web.TCPSite(self._runner, self.host, self.port).start()
            except OSError:
                await self.stop()  # the daemon never stops a server that did not start
                raise
        self.port = self._runner.addresses[0][1]
        log.info("tracking on %s:%d, links at %s", self.host, self.port, self.links.base_url)

    async def stop(self) -> None:
        """Stop accepting requests, let those under way finish, then write every queued event."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.queue.stop()

    # -- opens and clicks: judged, queued, never waiting for the store -------------------

    async def _open(self, request: web.Request) -> web.Response:
        opened = self.links.read_open(request.match_info["token"])
        if opened is not None:
            now = self.clock.now()
            user_agent, ip = request.headers.get("User-Agent", ""), self._client_address(request)
            verdict = judge_open(method=request.method, user_agent=user_agent, ip=ip, at=now, sent_at=opened.sent_at)
            self.queue.put(
                TrackingEvent(
                    at=now, type="opened", message=opened.message, machine=verdict.machine, reason=verdict.reason,
                    data=_client(ip, user_agent, verdict),
                )
            )
            self.opens += 1
        return web.Response(body=GIF, headers=PIXEL_HEADERS)

    async def _click(self, request: web.Request) -> web.StreamResponse:
        url = request.query.get("u")
        click = self.links.read_click(request.match_info["token"], url)
        if click is None or (url is not None and not url.lower().startswith(("http://", "https://"))):
            return self._page(webpages.message_page(self._lang(request), "notfound.title", "notfound"), 404)
        now, seconds = self.clock.now(), time.monotonic()
        user_agent, ip = request.headers.get("User-Agent", ""), self._client_address(request)
        recent = self._recent_clicks(click.message, seconds)
        verdict = judge_click(
            method=request.method, user_agent=user_agent, ip=ip, at=now, sent_at=click.sent_at, link=click.link,
            seconds=seconds, recent=recent, scanner_seconds=self.config.tracking.scanner_seconds,
        )
        data = _client(ip, user_agent, verdict)
        data.update(link=click.link, tag=click.tag, url=click.url)
        self.queue.put(
            TrackingEvent(at=now, type="clicked", message=click.message, machine=verdict.machine, reason=verdict.reason, data=data)
        )
        if verdict.reclassify:
            self.queue.put(Reclassification(click.message, tuple((c.link, c.at) for c in verdict.reclassify), "all-links"))
            recent[:] = [RecentClick(c.link, c.seconds, c.at, True) for c in recent]
        recent.append(RecentClick(click.link, seconds, now, verdict.machine))
        self.clicks += 1
        if click.honeypot:
            return web.Response(text=webpages.HONEYPOT_PAGE, content_type="text/html", headers=PAGE_HEADERS)
        return web.Response(status=302, headers={"Location": quote(click.url, safe=_URL_SAFE), "Cache-Control": "no-store"})

    def _recent_clicks(self, message: int, seconds: float) -> list[RecentClick]:
        """The message's clicks of the last ALL_LINKS_SECONDS, kept for a bounded set of messages."""
        recent = self._recent.pop(message, [])
        recent = [c for c in recent[-RECENT_PER_MESSAGE:] if seconds - c.seconds <= ALL_LINKS_SECONDS]
        self._recent[message] = recent
        if len(self._recent) > RECENT_MESSAGES:
            self._recent.popitem(last=False)
        return recent

    # -- unsubscribe: a GET shows a choice, a POST acts --------------------------------

    async def _unsubscribe_page(self, request: web.Request) -> web.Response:
        lang = self._lang(request)
        token = self.links.read_unsubscribe(request.match_info["token"])
        if token is None:
            return self._page(webpages.message_page(lang, "notfound.title", "notfound"), 404)
        title = self.config.list_config(token.list_name).title if token.list_name else ""
        return self._page(webpages.unsubscribe_form(lang, action=request.path, list_title=title))

    async def _unsubscribe(self, request: web.Request) -> web.Response:
        form = await request.post()
        lang = webpages.language(request.headers.get("Accept-Language", ""), str(form.get("lang", "")))
        token = self.links.read_unsubscribe(request.match_info["token"])
        if token is None:
            return self._page(webpages.message_page(lang, "notfound.title", "notfound"), 404)
        one_click = form.get("List-Unsubscribe") == "One-Click"  # RFC 8058 3.1
        scope = form.get("scope")
        if not one_click and scope not in ("list", "all"):
            return self._page(webpages.error_page(lang, "scope must be list or all"), 400)
        everything = not token.list_name or scope == "all"
        email = await self.store.unsubscribe(
            message=token.message, email=None, list_name="" if everything else token.list_name, everything=everything,
            method="one-click" if one_click else "unsubscribe-page", ip=self._client_address(request),
            user_agent=_user_agent(request), now=self.clock.now(),
        )
        if email is None:
            return self._page(webpages.message_page(lang, "notfound.title", "notfound"), 404)
        log.info("unsubscribed message %d from %s (%s)", token.message, "everything" if everything else token.list_name,
                 "one-click" if one_click else "page")
        if one_click:
            return web.Response(text="Unsubscribed\n", headers={"Cache-Control": "no-store"})
        if everything:
            return self._page(webpages.message_page(lang, "unsubscribed.title", "unsubscribed.all"))
        title = self.config.list_config(token.list_name).title
        return self._page(webpages.message_page(lang, "unsubscribed.title", "unsubscribed.list", list=title))

    # -- opt-in ------------------------------------------------------------------------

    async def _subscribe(self, request: web.Request) -> web.Response:
        ip = self._client_address(request)
        lang = self._lang(request)
        if not self._subscribe_limit.allow(ip, time.monotonic()):
            refused = self._answer(request, {"error": "rate-limited"}, webpages.message_page(lang, "error.title", "ratelimited"), 429)
            refused.headers["Retry-After"] = "3600"  # RFC 6585 4: the window is an hour
            return refused
        form = await request.post()
        fields = {name: str(value).strip() for name, value in form.items() if isinstance(value, str)}
        if any(len(value) > MAX_FIELD for value in fields.values()):
            return self._refuse(request, lang, "a field is too long")
        list_name = fields.get("list", "")
        list_config = self.config.lists.get(list_name)
        title = list_config.title if list_config else list_name
        if fields.get("website"):
            # The honeypot field is hidden from people; a bot that fills it gets the answer a
            # person would, so it learns nothing, and nothing is stored.
            log.info("subscribe form honeypot filled from %s; ignored", ip)
            pending = bool(list_config and list_config.double_opt_in)
            return self._subscribed(request, lang, pending=pending, email=fields.get("email", ""), title=title)
        if list_config is None:
            # A list only `leads import --list` made has no settings (double opt-in, sender,
            # title), so a sign-up for it could not be handled as the operator means.
            # What to change is the operator's to read, in the log; a visitor is told no more than
            # that this form cannot take sign-ups (nor is their own text shown back to them).
            if not list_name:
                log.warning("a sign-up form without a list field: add <input type=hidden name=list value=NAME>")
            else:
                shown = list_name[:64]
                log.warning("a sign-up for the undeclared list %r: declare [lists.%s] in mailer.toml to accept them", shown, shown)
            return self._refuse(request, lang, "this form does not accept sign-ups")
        try:
            if len(fields.get("email", "")) > MAX_EMAIL:
                raise EmailNotValidError(f"longer than {MAX_EMAIL} characters")
            email = validate_email(fields.get("email", ""), check_deliverability=False).normalized
        except EmailNotValidError as error:
            return self._refuse(request, lang, f"invalid email address: {error}")
        identity = self.config.identities[list_config.sender]
        result = await self.store.subscribe(
            email=email,
            first_name=fields.get("first_name") or fields.get("name", ""),
            last_name=fields.get("last_name", ""),
            list_name=list_name,
            source=fields.get("source", ""),
            consent_text=fields.get("consent", ""),
            ip=ip,
            user_agent=_user_agent(request),
            double_opt_in=list_config.double_opt_in,
            confirm_message_id=make_message_id(identity.message_id_domain),
            now=self.clock.now(),
        )
        log.info("subscribe to %s: lead %d %s", list_name, result.lead_id, result.status)
        if result.confirm_message is not None and self.on_message_queued is not None:
            self.on_message_queued()  # the daemon sends the confirmation now, not at its next poll
        # The answer depends on the list only, never on whether the address was known.
        return self._subscribed(request, lang, pending=list_config.double_opt_in, email=email, title=title)

    def _subscribed(self, request: web.Request, lang: str, *, pending: bool, email: str, title: str) -> web.Response:
        key = "subscribe.pending" if pending else "subscribe.done"
        html = webpages.message_page(lang, f"{key}.title", key, email=email, list=title)
        return self._answer(request, {"status": "pending" if pending else "subscribed"}, html)

    def _refuse(self, request: web.Request, lang: str, problem: str) -> web.Response:
        return self._answer(request, {"error": problem}, webpages.error_page(lang, problem), 400)

    async def _confirm(self, request: web.Request) -> web.Response:
        form = await request.post() if request.method == "POST" else None
        lang = webpages.language(request.headers.get("Accept-Language", ""), str((form or request.query).get("lang", "")))
        token = self.links.read_confirm(request.match_info["token"], now=self.clock.now())
        if token is None:
            return self._page(webpages.message_page(lang, "expired.title", "expired"), 404)
        title = self.config.list_config(token.list_name).title
        user_agent, ip = _user_agent(request), self._client_address(request)
        if form is None and is_machine_request(method=request.method, user_agent=user_agent, ip=ip):
            # Scanners open confirm links too: only a person's GET or a pressed button confirms.
            return self._page(webpages.confirm_form(lang, action=request.path, list_title=title))
        confirmed = await self.store.confirm_subscription(
            lead_id=token.lead_id, list_name=token.list_name, ip=ip, user_agent=user_agent, now=self.clock.now()
        )
        if not confirmed:
            return self._page(webpages.message_page(lang, "expired.title", "expired"), 404)
        return self._page(webpages.message_page(lang, "confirmed.title", "confirmed", list=title))

    # -- plumbing ----------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"ok": True, "queue": len(self.queue), "written": self.queue.written, "dropped": self.queue.dropped,
             "opens": self.opens, "clicks": self.clicks},
            headers={"Cache-Control": "no-store"},
        )

    def _client_address(self, request: web.Request) -> str:
        """The visitor's address: the connection's peer, or behind a trusted proxy the client
        it forwarded for. Read once per request; every address stored or judged is this one."""
        peer = request.remote or ""
        if self._proxies is None:
            return peer
        return self._proxies.client(peer, request.headers.getall("X-Forwarded-For", ()))

    def _lang(self, request: web.Request) -> str:
        return webpages.language(request.headers.get("Accept-Language", ""), request.query.get("lang", ""))

    def _page(self, html: str, status: int = 200) -> web.Response:
        return web.Response(text=html, status=status, content_type="text/html", headers=PAGE_HEADERS)

    def _answer(self, request: web.Request, body: dict[str, str], html: str, status: int = 200) -> web.Response:
        """JSON for a client that asks for it (a form posted by script), else the page."""
        accept = request.headers.get("Accept", "")
        if "application/json" in accept and "text/html" not in accept:
            return web.Response(text=json.dumps(body), status=status, content_type="application/json",
                                headers={"Cache-Control": "no-store"})
        return self._page(html, status)


def _user_agent(request: web.Request) -> str:
    return request.headers.get("User-Agent", "")[:MAX_USER_AGENT]


def _client(ip: str, user_agent: str, verdict: Verdict) -> dict[str, object]:
    data: dict[str, object] = {"ip": ip, "user_agent": user_agent[:MAX_USER_AGENT]}
    if verdict.agent:
        data["agent"] = verdict.agent
    return data
