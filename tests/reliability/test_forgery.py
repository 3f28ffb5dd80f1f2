"""Forged tokens and open-redirect attempts against the tracking endpoints: zero accepted.

Thousands of requests over real HTTP to the TrackingServer (aiohttp) with a real SQLite
store: random tokens, genuine tokens with one character changed, cut short or lengthened,
tokens signed with another key, tokens of one purpose sent to another endpoint, and genuine
click tokens with their destination swapped for a hostile one. Genuine links are the
control: they must still work, or the test would prove nothing. Then a hundred thousand
mutated tokens straight through `Links.read_*`.
"""

from __future__ import annotations

import asyncio
import base64
import random
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from conftest import make_config, make_leads, write_workspace
from mailer.clock import FakeClock
from mailer.daemon import Daemon
from mailer.links import Links
from mailer.sqlitestore import SQLiteStore
from mailer.tokens import Signer
from mailer.tracking import TrackingServer

from .harness import ONE_STEP, START

ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 6, as the tokens write it
DESTINATION = "https://acme.example/pricing?plan=pro#compare"
HOSTILE_URLS = [
    "https://evil.example/",
    "http://evil.example/pricing?plan=pro#compare",
    "//evil.example/",
    "https:evil.example",
    "https://acme.example@evil.example/",
    "https://acme.example.evil.example/pricing",
    "https:/\\evil.example",
    "javascript:alert(document.cookie)",
    "data:text/html,<script>alert(1)</script>",
    "https://acme.example/pricing?plan=pro#compare\r\nSet-Cookie: a=b",
    "https://acme.example/pricing?plan=pro#compare ",
    "https://acme.example/pricing?plan=pro#compare/../../evil",
    "https://ACME.example/pricing?plan=pro#compare",
    "https://acme.example/pricing?plan=pro",
    "",
]
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
SEED = 7


def mutations(token: str, rng: random.Random) -> Iterator[str]:
    """Tokens that differ from `token` in what they decode to (never only in letter case)."""
    for position in range(len(token)):
        other = rng.choice([c for c in ALPHABET if c != token[position]])
        yield token[:position] + other + token[position + 1 :]
    for length in range(1, len(token)):
        yield token[:length]
    yield token + rng.choice(ALPHABET)
    yield token[1:] + token[0]
    yield token[::-1]
    for position in range(len(token) - 1):
        if token[position] != token[position + 1]:
            yield token[:position] + token[position + 1] + token[position] + token[position + 2 :]


def random_token(rng: random.Random) -> str:
    raw = rng.randbytes(rng.randint(1, 40))
    return base64.b32encode(raw).decode().rstrip("=").lower()


def _read(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as connection:
        return list(connection.execute(sql))


def token_of(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[1]


async def test_forged_tokens_and_swapped_urls_are_never_accepted_over_http(tmp_path: Path, figures: Callable[[str], None]) -> None:
    """No forged or mutated token, and no genuine click token with another URL, yields an event, a redirect or an unsubscription."""
    rng = random.Random(SEED)
    write_workspace(tmp_path, ONE_STEP)
    config = make_config(
        tmp_path, 2525, tracking={"listen": "127.0.0.1:0", "flush_seconds": 0.05},
        lists={"signups": {"title": "Signups", "double_opt_in": True}},
    )
    clock = FakeClock(START + timedelta(days=1))
    async with SQLiteStore(config.store) as store:
        await store.upsert_leads(make_leads(3), list_name="signups", now=START)
        planner = Daemon(config=config, store=store, clock=FakeClock(START))
        planner.load_scenarios()
        await planner.enter_leads(START)
        await planner.schedule_due(START)
        rows = [int(row[0]) for row in _read(config.store, "SELECT id FROM messages ORDER BY id")]
        lead_id = int(_read(config.store, "SELECT id FROM leads ORDER BY id LIMIT 1")[0][0])
        signer = Signer(config.secret_keys())
        server = TrackingServer(config=config, store=store, links=Links(signer, config.tracking.public_base), clock=clock)
        await server.start()
        base = f"http://127.0.0.1:{server.port}"
        ours, foreign = Links(signer, base), Links(Signer([b"f" * 48]), base)
        sent = START
        genuine = {
            "o": ours.open_url(rows[0], sent),
            "c": ours.click_url(rows[0], sent, url=DESTINATION, link=1, tag="pricing"),
            "trap": ours.honeypot_url(rows[0], sent),
            "u": ours.unsubscribe_url(rows[1], "signups"),
            "confirm": ours.confirm_url(lead_id, "signups", expires_at=clock.now() + timedelta(days=2)),
        }
        tokens = {kind: token_of(url) for kind, url in genuine.items()}
        # (method, path, query or form, what it is)
        attempts: list[tuple[str, str, dict[str, str], str]] = []
        for _ in range(300):
            forged = random_token(rng)
            attempts += [
                ("GET", f"/o/{forged}", {}, "random"), ("GET", f"/c/{forged}", {"u": DESTINATION}, "random"),
                ("GET", f"/c/{forged}", {}, "random"), ("POST", f"/u/{forged}", {"List-Unsubscribe": "One-Click"}, "random"),
                ("POST", f"/confirm/{forged}", {}, "random"),
            ]
        for kind, route, data in (
            ("o", "o", {}), ("c", "c", {"u": DESTINATION}), ("trap", "c", {}),
            ("u", "u", {"List-Unsubscribe": "One-Click"}), ("confirm", "confirm", {}),
        ):
            method = "POST" if route in ("u", "confirm") else "GET"
            attempts += [(method, f"/{route}/{m}", data, "mutated") for m in mutations(tokens[kind], rng)]
        attempts += [
            ("GET", f"/o/{token_of(foreign.open_url(rows[0], sent))}", {}, "foreign-key"),
            ("GET", f"/c/{token_of(foreign.click_url(rows[0], sent, url=DESTINATION, link=1))}", {"u": DESTINATION}, "foreign-key"),
            ("POST", f"/u/{token_of(foreign.unsubscribe_url(rows[1], 'signups'))}", {"List-Unsubscribe": "One-Click"}, "foreign-key"),
            ("POST", f"/confirm/{token_of(foreign.confirm_url(lead_id, 'signups', expires_at=clock.now() + timedelta(days=2)))}", {}, "foreign-key"),
        ]
        for kind, token in tokens.items():  # each purpose's token at every other endpoint
            for route, data in (("o", {}), ("c", {"u": DESTINATION}), ("c", {}), ("u", {"List-Unsubscribe": "One-Click"}), ("confirm", {})):
                if (kind, route, bool(data)) in (("o", "o", False), ("c", "c", True), ("trap", "c", False), ("u", "u", True), ("confirm", "confirm", False)):
                    continue
                attempts.append(("POST" if route in ("u", "confirm") else "GET", f"/{route}/{token}", data, "wrong-purpose"))
        attempts += [("GET", f"/c/{tokens['c']}", {"u": url}, "swapped-url") for url in HOSTILE_URLS]
        javascript = ours.click_url(rows[0], sent, url="javascript:alert(1)", link=2)
        attempts.append(("GET", f"/c/{token_of(javascript)}", {"u": "javascript:alert(1)"}, "signed-javascript"))

        outcomes: Counter[str] = Counter()
        accepted: list[tuple[str, str, int]] = []
        semaphore = asyncio.Semaphore(32)
        async with aiohttp.ClientSession(headers={"User-Agent": CHROME}) as http:

            async def attempt(method: str, path: str, data: dict[str, str], what: str) -> None:
                async with semaphore:
                    if method == "GET":
                        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in data.items())
                        request = http.get(base + path + (f"?{query}" if query else ""), allow_redirects=False)
                    else:
                        request = http.post(base + path, data=data, allow_redirects=False)
                    async with request as response:
                        await response.read()
                        outcomes[f"{response.status}"] += 1
                        # The pixel always answers its GIF; its acceptance shows in server.opens.
                        if response.status != 404 and not path.startswith("/o/"):
                            accepted.append((what, path, response.status))

            opens_before, clicks_before = server.opens, server.clicks
            await asyncio.gather(*(attempt(*a) for a in attempts))
            forged_opens, forged_clicks = server.opens - opens_before, server.clicks - clicks_before

            # Controls: the genuine links still work, so the refusals above mean something.
            async with http.get(genuine["c"], allow_redirects=False) as response:
                assert response.status == 302 and response.headers["Location"] == DESTINATION
            async with http.get(genuine["o"]) as response:
                assert response.status == 200
            async with http.post(genuine["u"], data={"List-Unsubscribe": "One-Click"}) as response:
                assert response.status == 200
        assert server.opens == opens_before + 1 and server.clicks == clicks_before + 1
        await server.stop()
        unsubscribed = _read(config.store, "SELECT count(*) FROM suppressions")
    assert accepted == [], accepted[:10]
    assert forged_opens == 0 and forged_clicks == 0
    assert unsubscribed[0][0] == 1, "only the genuine unsubscription took effect"
    assert not [status for status in outcomes if status.startswith("5")], outcomes
    kinds = Counter(what for *_, what in attempts)
    figures(
        f"W1 tracking-forgery: requests={len(attempts)} accepted=0 forged_opens=0 forged_clicks=0 forged_unsubscribes=0 "
        f"open_redirects=0 server_errors=0 by_kind={dict(kinds)} statuses={dict(outcomes)} genuine_controls=3/3"
    )


def test_a_hundred_thousand_mutated_tokens_never_verify(figures: Callable[[str], None]) -> None:
    """Mutated, random, foreign-key and wrong-purpose tokens never read as genuine; case changes read as the same token."""
    rng = random.Random(SEED)
    links = Links(Signer([b"k" * 48]), "https://t.example")
    foreign = Links(Signer([b"f" * 48]), "https://t.example")
    now = START + timedelta(days=1)
    readers: dict[str, Callable[[str], object]] = {
        "open": links.read_open,
        "click": lambda t: links.read_click(t, DESTINATION),
        "trap": lambda t: links.read_click(t, None),
        "unsubscribe": links.read_unsubscribe,
        "confirm": lambda t: links.read_confirm(t, now=now),
    }
    accepted = tried = 0
    for message in range(1, 200):
        made = {
            "open": links.open_url(message, START),
            "click": links.click_url(message, START, url=DESTINATION, link=1 + message % 5, tag="t"),
            "trap": links.honeypot_url(message, START),
            "unsubscribe": links.unsubscribe_url(message, "signups"),
            "confirm": links.confirm_url(message, "signups", expires_at=now + timedelta(days=1)),
        }
        for kind, url in made.items():
            token = token_of(url)
            assert readers[kind](token) is not None and readers[kind](token.upper()) is not None, "the control"
            for forged in (*mutations(token, rng), random_token(rng), token_of(foreign.open_url(message, START))):
                tried += 1
                accepted += readers[kind](forged) is not None
            for other, read in readers.items():
                if other != kind:
                    tried += 1
                    accepted += read(token) is not None
            for url_swap in HOSTILE_URLS:
                if kind == "click":
                    tried += 1
                    accepted += links.read_click(token, url_swap) is not None
    assert tried >= 100_000
    assert accepted == 0
    figures(f"W2 token-mutations: tokens_tried={tried} accepted={accepted}")
