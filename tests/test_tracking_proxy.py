"""The tracking server behind a reverse proxy: `[tracking] trusted_proxies`, over real HTTP and a real store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from conftest import write_workspace
from mailer.cli import main
from mailer.config import load_config
from mailer.errors import ConfigError
from test_tracking import NOW, SENT, Site, serving

MIMECAST = "205.139.110.9"  # in Mimecast's 205.139.110.0/24 (mailer.machine.AGENTS)
MICROSOFT = "40.107.3.4"  # in Exchange Online Protection's 40.107.0.0/16
VISITOR, OTHER_VISITOR = "203.0.113.7", "198.51.100.23"


def forwarded(*hops: str) -> dict[str, str]:
    """The header nginx's `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for` sends."""
    return {"X-Forwarded-For": ", ".join(hops)}


async def open_pixel(site: Site, message: int, headers: dict[str, str]) -> None:
    async with site.http.get(site.links.open_url(message, SENT), headers=headers) as response:
        assert response.status == 200


async def subscribe(site: Site, email: str, headers: dict[str, str], list_name: str = "news") -> int:
    form = {"email": email, "list": list_name, "consent": "Yes, send me Acme News."}
    async with site.http.post(f"{site.base}/subscribe", data=form, headers={"Accept": "application/json", **headers}) as response:
        await response.read()
        return response.status


# Behind a trusted proxy


async def test_a_scanner_behind_the_proxy_is_judged_by_its_own_network(tmp_path: Path) -> None:
    """With 127.0.0.1 trusted, a pixel and a click forwarded for gateway networks are machine events
    with the gateway's address; a person's forwarded open is human with theirs."""
    async with serving(tmp_path, trusted_proxies=["127.0.0.1"]) as site:
        await open_pixel(site, site.messages[0], forwarded(MIMECAST))
        click = site.links.click_url(site.messages[1], SENT, url="https://acme.example/", link=1)
        async with site.http.get(click, headers=forwarded(MICROSOFT), allow_redirects=False) as response:
            assert response.status == 302
        await open_pixel(site, site.messages[2], forwarded("6.6.6.6", VISITOR))  # the visitor's forgery, then nginx's hop
        events = await site.tracking_events()
    assert [(e["type"], e["machine"], e["data"].get("reason"), e["data"].get("agent"), e["data"]["ip"]) for e in events] == [
        ("opened", 1, "scanner", "mimecast", MIMECAST),
        ("clicked", 1, "scanner", "microsoft-defender", MICROSOFT),
        ("opened", 0, None, None, VISITOR),
    ]


async def test_the_subscribe_limit_is_per_forwarded_visitor(tmp_path: Path) -> None:
    """Behind the proxy, the 11th sign-up of one visitor in an hour is refused while another visitor's is taken."""
    async with serving(tmp_path, trusted_proxies=["127.0.0.1"], subscribe_per_hour=10) as site:
        for number in range(10):
            assert await subscribe(site, f"p{number}@example.com", forwarded(VISITOR)) == 200
        assert await subscribe(site, "p10@example.com", forwarded(VISITOR)) == 429
        assert await subscribe(site, "p10@example.com", forwarded("6.6.6.6", VISITOR)) == 429  # a forgery does not reset it
        assert await subscribe(site, "other@example.com", forwarded(OTHER_VISITOR)) == 200
        assert await site.store.get_lead("p10@example.com") is None
        assert await site.store.membership("other@example.com", "news") == "pending"


async def test_consent_evidence_holds_the_forwarded_visitor_s_address(tmp_path: Path) -> None:
    """The sign-up, its confirmation and an unsubscribe, each through the proxy, are stored with the visitor's address."""
    async with serving(tmp_path, trusted_proxies=["127.0.0.1", "::1"]) as site:
        assert await subscribe(site, "new@example.com", forwarded(VISITOR)) == 200
        lead = await site.store.get_lead("new@example.com")
        assert lead is not None and lead.id is not None
        confirm = site.links.confirm_url(lead.id, "news", expires_at=NOW + timedelta(days=7))
        async with site.http.post(confirm, headers=forwarded(OTHER_VISITOR)) as response:
            assert response.status == 200
        unsubscribe = site.links.unsubscribe_url(site.messages[0], "news")
        async with site.http.post(unsubscribe, data={"List-Unsubscribe": "One-Click"}, headers=forwarded("2001:db8::7")) as response:
            assert response.status == 200
        signed_up = [(c.action, c.ip) for c in await site.store.consents_of("new@example.com")]
        [unsubscribed] = await site.store.consents_of("lead0@example.com")
    assert signed_up == [("pending", VISITOR), ("confirmed", OTHER_VISITOR)]
    assert (unsubscribed.action, unsubscribed.ip) == ("unsubscribed", "2001:db8::7")


async def test_a_malformed_header_from_the_proxy_falls_back_to_the_peer(tmp_path: Path) -> None:
    """X-Forwarded-For that cannot be read gets the usual answer and records the peer, never a 500."""
    async with serving(tmp_path, trusted_proxies=["127.0.0.1"]) as site:
        await open_pixel(site, site.messages[0], forwarded(VISITOR, "banana"))
        assert await subscribe(site, "new@example.com", forwarded("unknown")) == 200
        [event] = await site.tracking_events()
        [consent] = await site.store.consents_of("new@example.com")
    assert event["data"]["ip"] == consent.ip == "127.0.0.1"


# Not behind a trusted proxy


async def test_by_default_a_forged_header_is_ignored(tmp_path: Path) -> None:
    """With no trusted proxies, X-Forwarded-For changes neither the judgement, the stored address nor the limit."""
    async with serving(tmp_path, subscribe_per_hour=2) as site:
        await open_pixel(site, site.messages[0], forwarded(MIMECAST))
        [event] = await site.tracking_events()
        statuses = [await subscribe(site, f"p{n}@example.com", forwarded(f"198.51.100.{n}")) for n in range(3)]
        [consent] = await site.store.consents_of("p0@example.com")
    assert (event["machine"], event["data"]["ip"]) == (0, "127.0.0.1")
    assert statuses == [200, 200, 429] and consent.ip == "127.0.0.1"


async def test_a_peer_outside_the_trusted_networks_cannot_forge_its_address(tmp_path: Path) -> None:
    """Trusting only 10.0.0.0/8, a connection from 127.0.0.1 is its own visitor whatever it forwards."""
    async with serving(tmp_path, trusted_proxies=["10.0.0.0/8"]) as site:
        await open_pixel(site, site.messages[0], forwarded(MIMECAST))
        [event] = await site.tracking_events()
    assert (event["machine"], event["data"]["ip"]) == (0, "127.0.0.1")


# mailer.toml


def write_config(tmp_path: Path, proxies: str) -> Path:
    path = tmp_path / "mailer.toml"
    path.write_text(f'[identities.default]\nfrom = "Acme <news@acme.example>"\n\n[tracking]\ntrusted_proxies = {proxies}\n')
    return path


def test_trusted_proxies_are_read_normalized(tmp_path: Path) -> None:
    """Addresses and networks, IPv4 and IPv6, are kept as networks, each once."""
    path = write_config(tmp_path, '["127.0.0.1", "::1", "10.0.0.0/8", "::ffff:127.0.0.1"]')
    assert load_config(path).tracking.trusted_proxies == ("127.0.0.1/32", "::1/128", "10.0.0.0/8")


def test_no_trusted_proxies_by_default(tmp_path: Path) -> None:
    """An unwritten key trusts nobody, as does an empty list."""
    unwritten = tmp_path / "mailer.toml"
    unwritten.write_text('[tracking]\nlisten = "127.0.0.1:8080"\n')
    assert load_config(unwritten).tracking.trusted_proxies == ()
    assert load_config(write_config(tmp_path, "[]")).tracking.trusted_proxies == ()


@pytest.mark.parametrize(
    ("written", "problem"),
    [
        ('["10.0.0.300"]', "not an IP address or network: '10.0.0.300'"),
        ('["127.0.0.1", "banana"]', "not an IP address or network: 'banana'"),
        ('["10.0.0.1/33"]', "'10.0.0.1/33': a prefix of /33 is longer than the address (32 bits)"),
        ('["0.0.0.0/0"]', "'0.0.0.0/0' is every address: any visitor could then choose the address recorded"),
        ('"127.0.0.1"', "not a list of addresses: '127.0.0.1'"),
    ],
)
def test_a_bad_entry_is_a_config_error_on_its_line(tmp_path: Path, written: str, problem: str) -> None:
    """Each mistake names mailer.toml, the line, tracking.trusted_proxies, the bad value and what to write."""
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(tmp_path, written))
    error = raised.value
    assert (error.file, error.line, error.field, error.problem) == (str(tmp_path / "mailer.toml"), 5, "tracking.trusted_proxies", problem)
    assert error.hint is not None and '["127.0.0.1", "::1"]' in error.hint


@pytest.mark.parametrize("command", ["validate", "serve"])
def test_validate_and_serve_exit_2_on_a_bad_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """`mailer validate` and `mailer serve` print one line naming the entry and exit 2."""
    write_workspace(tmp_path)
    write_config(tmp_path, '["banana"]')
    monkeypatch.chdir(tmp_path)
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "mailer: error: mailer.toml:5: tracking.trusted_proxies: not an IP address or network: 'banana'" in err
