"""Human or machine: each rule of mailer.machine, tried directly."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mailer.machine import (
    AGENTS,
    ALL_LINKS_SECONDS,
    MACHINE,
    PROXY,
    RecentClick,
    Verdict,
    is_machine_request,
    judge_click,
    judge_open,
    known_agent,
)

SENT = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
LATER = SENT + timedelta(hours=3)
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
HOME_IP = "203.0.113.7"  # TEST-NET-3 (RFC 5737): nobody's scanner


def click(**changes: Any) -> Verdict:
    """judge_click with a person's defaults, overridden by `changes`."""
    arguments: dict[str, Any] = dict(
        method="GET", user_agent=CHROME, ip=HOME_IP, at=LATER, sent_at=SENT, link=1, seconds=100.0, recent=(),
        scanner_seconds=10.0,
    )
    arguments.update(changes)
    return judge_click(**arguments)


def test_a_person_opening_late_is_human() -> None:
    """A browser fetching the pixel hours after sending is a human open."""
    verdict = judge_open(method="GET", user_agent=CHROME, ip=HOME_IP, at=LATER, sent_at=SENT)
    assert not verdict.machine and verdict.reason == ""


def test_head_is_a_machine_for_opens_and_clicks() -> None:
    """A HEAD request is a link checker, for the pixel and for a link."""
    assert judge_open(method="HEAD", user_agent=CHROME, ip=HOME_IP, at=LATER, sent_at=SENT).reason == "head"
    assert click(method="HEAD").reason == "head"


def test_apple_mpp_is_its_bare_user_agent_from_any_network() -> None:
    """Apple MPP sends the bare 'Mozilla/5.0' from Apple's and partners' networks; Apple's network alone is a person."""
    mpp = judge_open(method="GET", user_agent="Mozilla/5.0", ip="17.58.101.4", at=LATER, sent_at=SENT)
    assert mpp.machine and mpp.reason == "privacy-proxy" and mpp.agent == "apple-mpp"
    assert judge_open(method="GET", user_agent="Mozilla/5.0", ip=HOME_IP, at=LATER, sent_at=SENT).machine
    assert not judge_open(method="GET", user_agent=CHROME, ip="17.58.101.4", at=LATER, sent_at=SENT).machine


def test_image_proxies_that_fetch_on_open_count_as_human_with_the_proxy_named() -> None:
    """Gmail's and Yahoo's image proxies fetch when a person opens: human, agent noted."""
    gmail = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
    verdict = judge_open(method="GET", user_agent=gmail, ip="66.249.84.1", at=LATER, sent_at=SENT)
    assert not verdict.machine and verdict.agent == "google-image-proxy"
    yahoo = judge_open(method="GET", user_agent="YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", ip="98.136.0.1", at=LATER, sent_at=SENT)
    assert not yahoo.machine and yahoo.agent == "yahoo-mail-proxy"


def test_a_pixel_fetched_right_after_sending_is_a_prefetch() -> None:
    """A pixel fetched within a second of sending was fetched on delivery, not read."""
    verdict = judge_open(method="GET", user_agent=CHROME, ip=HOME_IP, at=SENT + timedelta(seconds=1), sent_at=SENT)
    assert verdict.machine and verdict.reason == "prefetch"
    assert not judge_open(method="GET", user_agent=CHROME, ip=HOME_IP, at=SENT + timedelta(seconds=5), sent_at=SENT).machine


def test_every_listed_gateway_user_agent_is_a_scanner() -> None:
    """Each security gateway's user agent marks an open and a click as a scanner's."""
    for agent_ua, name in [
        ("Mozilla/5.0 (compatible; Mimecast URL Protect)", "mimecast"),
        ("Proofpoint URL Defense", "proofpoint"),
        ("Barracuda Sentinel (EE)", "barracuda"),
        ("Cisco IronPort URL filter", "cisco-ironport"),
        ("TrendMicro Email Security", "trend-micro"),
        ("Symantec MessageLabs", "symantec"),
        ("Sophos Time-of-Click", "sophos"),
        ("FortiGuard URL", "fortinet"),
        ("Bitdefender Link Checker", "bitdefender"),
        ("Mozilla/5.0 (Windows NT 10.0) BingPreview/1.0b", "microsoft-defender"),
    ]:
        verdict = click(user_agent=agent_ua)
        assert verdict.machine and verdict.reason == "scanner" and verdict.agent == name, agent_ua
        assert judge_open(method="GET", user_agent=agent_ua, ip=HOME_IP, at=LATER, sent_at=SENT).reason == "scanner"


def test_a_gateway_network_is_a_scanner_whatever_user_agent_it_shows() -> None:
    """A browser-looking click from a gateway's published network is the gateway's."""
    verdict = click(ip="40.107.22.5")
    assert verdict.machine and verdict.agent == "microsoft-defender"
    assert click(ip="::ffff:64.235.150.1").agent == "barracuda"


def test_http_libraries_and_headless_browsers_are_bots() -> None:
    """curl, python-requests, Go's client and headless Chrome are bots."""
    for agent_ua in ("curl/8.5.0", "python-requests/2.31", "Go-http-client/1.1", "Mozilla/5.0 HeadlessChrome/120.0",
                     "Mozilla/5.0 (compatible; Googlebot/2.1)"):
        verdict = click(user_agent=agent_ua)
        assert verdict.machine and verdict.reason == "bot", agent_ua


def test_people_with_unusual_but_real_user_agents_stay_human() -> None:
    """Outlook's own UA, a Cubot phone and Safari are people, not bots."""
    for agent_ua in (
        "Mozilla/4.0 (compatible; ms-office; MSOffice 16)",
        "Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 Chrome/90.0 Mobile Safari/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Version/17.0 Mobile Safari/604.1",
    ):
        assert not click(user_agent=agent_ua).machine, agent_ua


def test_a_click_without_user_agent_is_a_machine() -> None:
    """Every browser names itself; a click with no User-Agent is a script's."""
    assert click(user_agent="").reason == "no-user-agent"


def test_a_click_within_scanner_seconds_of_sending_is_too_soon() -> None:
    """A click 3 s after sending, with 10 s configured, is a scanner on delivery."""
    assert click(at=SENT + timedelta(seconds=3)).reason == "too-soon"
    assert not click(at=SENT + timedelta(seconds=11)).machine
    assert click(at=SENT + timedelta(seconds=11), scanner_seconds=60).reason == "too-soon"


def test_the_honeypot_link_is_always_a_machine() -> None:
    """Link 0, the hidden honeypot, is a machine even with a browser's UA, late."""
    assert click(link=0).reason == "honeypot"


def test_two_links_of_one_message_within_the_window_are_all_links() -> None:
    """A second distinct link clicked within the window makes a burst and reclassifies the first."""
    first = RecentClick(link=1, seconds=100.0, at=LATER, machine=False)
    verdict = click(link=2, seconds=100.0 + ALL_LINKS_SECONDS / 2, recent=(first,))
    assert verdict.machine and verdict.reason == "all-links"
    assert verdict.reclassify == (first,)


def test_the_same_link_twice_or_links_far_apart_are_not_a_burst() -> None:
    """A double click on one link, or two links minutes apart, stay human."""
    first = RecentClick(link=1, seconds=100.0, at=LATER, machine=False)
    assert not click(link=1, seconds=100.3, recent=(first,)).machine
    assert not click(link=2, seconds=100.0 + ALL_LINKS_SECONDS + 1, recent=(first,)).machine


def test_a_burst_only_reclassifies_clicks_taken_for_human() -> None:
    """Earlier clicks already marked machine are not reclassified again; a machine click keeps its reason."""
    machine = RecentClick(link=1, seconds=100.0, at=LATER, machine=True)
    human = RecentClick(link=2, seconds=100.5, at=LATER, machine=False)
    verdict = click(link=3, seconds=101.0, recent=(machine, human), user_agent="curl/8")
    assert verdict.reason == "bot" and verdict.reclassify == (human,)


def test_a_confirm_request_from_a_scanner_or_head_is_a_machine() -> None:
    """Without a send time, HEAD, no UA and known agents are machines; a browser is not."""
    assert is_machine_request(method="HEAD", user_agent=CHROME, ip=HOME_IP)
    assert is_machine_request(method="GET", user_agent="Mimecast", ip=HOME_IP)
    assert is_machine_request(method="GET", user_agent="", ip=HOME_IP)
    assert not is_machine_request(method="GET", user_agent=CHROME, ip=HOME_IP)


def test_every_agent_names_its_source_and_a_valid_kind() -> None:
    """The policy table is complete: every entry says where it comes from and what it is."""
    for agent in AGENTS:
        assert agent.source and agent.kind in (MACHINE, PROXY)
        assert (agent.kind == MACHINE) == bool(agent.reason)
        assert agent.user_agents or agent.exact_user_agent or agent.networks
        assert all(token == token.lower() for token in agent.user_agents)


@given(st.text(max_size=300), st.text(max_size=60), st.sampled_from(["GET", "HEAD", "POST", "", "get"]),
       st.integers(min_value=-10**6, max_value=10**6), st.integers(min_value=0, max_value=50))
def test_classification_never_raises(user_agent: str, ip: str, method: str, offset: int, link: int) -> None:
    """Any user agent, address string, method and timing gives a verdict, never an error."""
    at = SENT + timedelta(seconds=offset)
    judge_open(method=method, user_agent=user_agent, ip=ip, at=at, sent_at=SENT)
    recent = (RecentClick(link=link + 1, seconds=0.5, at=at, machine=False),)
    judge_click(method=method, user_agent=user_agent, ip=ip, at=at, sent_at=SENT, link=link, seconds=1.0,
                recent=recent, scanner_seconds=10.0)
    is_machine_request(method=method, user_agent=user_agent, ip=ip)
    known_agent(user_agent, ip)


@given(st.ip_addresses())
def test_any_ip_address_is_classified(address: object) -> None:
    """Every IPv4 and IPv6 address, mapped or not, finds an agent or none without error."""
    known_agent("", str(address))
