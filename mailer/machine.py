"""Human or machine: every open and click is judged before it counts.

Machines open and click mail all day: Apple Mail Privacy Protection fetches every pixel when
a message arrives, security gateways follow every link (unsubscribe links included) before
the recipient sees the message, and bots fetch whatever they find. Their events are kept,
marked `machine` with the reason, and never change scores, branches or consent.

The rules, in the order they are tried (the first that fires gives the reason):

| reason | open | click | why |
| --- | --- | --- | --- |
| `head` | yes | yes | browsers and mail clients GET; link checkers ask for headers only |
| `honeypot` | | yes | a link hidden from people (`Links.honeypot_url`): only machines follow it |
| `privacy-proxy`, `scanner`, `bot` | yes | yes | a known agent of `AGENTS` (user agent or network) |
| `no-user-agent` | | yes | every browser sends one; scripts and some scanners do not |
| `prefetch` | yes | | a pixel fetched within `PREFETCH_SECONDS` of sending: nobody reads that fast |
| `too-soon` | | yes | a click within `scanner_seconds` of sending: gateways scan on arrival |
| `all-links` | | yes | several links of one message clicked within `ALL_LINKS_SECONDS` |

A burst (`all-links`) is seen only at its second click; `judge_click` then also names the
earlier clicks of the burst that were taken for human, and the server marks them machine.
Image proxies that fetch when a person opens the message (Gmail's, Yahoo's) count as
human, with the proxy named.

Everything here is pure: the server passes the request's facts and the message's recent
clicks in, and stores what comes out.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

MACHINE, PROXY = "machine", "proxy"  # what an agent's requests are: a machine's, or a person's through a proxy

# Nobody opens a message within 2 s of its sending: the pixel was fetched on delivery.
# (The send time in the token has 1 s resolution, so 2 s is the smallest sound window.)
PREFETCH_SECONDS = 2.0
# Gateways follow every link of a message in one go; a person reads, clicks, reads the page
# and comes back, which takes longer than 2 s between two different links.
ALL_LINKS_SECONDS = 2.0
ALL_LINKS_DISTINCT = 2  # distinct links within the window that make a burst


@dataclass(frozen=True)
class Agent:
    """A known fetcher of mail content: who it is, how to recognise it, where that is from."""

    name: str
    kind: str  # MACHINE (a scanner, bot or prefetching proxy) or PROXY (a person behind it)
    reason: str  # the event's reason when kind is MACHINE
    user_agents: tuple[str, ...] = ()  # lower-case substrings of the User-Agent header
    exact_user_agent: str = ""  # the whole header, when the agent sends one fixed string
    networks: tuple[str, ...] = ()  # CIDR blocks it fetches from
    both: bool = False  # True: the user agent AND the network must match
    source: str = ""


# Policy as data. User-agent substrings are matched case-insensitively; networks change, so
# review them against the vendor's current list (each `source` says where it came from).
AGENTS: tuple[Agent, ...] = (
    Agent(
        "apple-mpp", MACHINE, "privacy-proxy", exact_user_agent="mozilla/5.0",
        source="Apple Mail Privacy Protection (iOS 15+, macOS 12+) fetches remote content on delivery through "
        "Apple's proxies, sending the bare UA 'Mozilla/5.0'. The UA alone decides: the proxies egress from "
        "Apple's 17.0.0.0/8 (ARIN NET-17) and from CDN partners' ranges too, and no person's mail client "
        "or browser sends that bare string, while people at Apple do browse from 17.0.0.0/8",
    ),
    Agent(
        "google-image-proxy", PROXY, "", user_agents=("googleimageproxy",),
        source="Gmail fetches images through ggpht.com when the recipient opens the message; UA "
        "'… (via ggpht.com GoogleImageProxy)'",
    ),
    Agent(
        "yahoo-mail-proxy", PROXY, "", user_agents=("yahoomailproxy",),
        source="Yahoo Mail / AOL fetch images through their proxy on open; UA 'YahooMailProxy'",
    ),
    Agent(
        "microsoft-defender", MACHINE, "scanner",
        # Outlook itself sends "ms-office" when a person opens a message: not listed.
        user_agents=("bingpreview", "microsoft office existence discovery", "microsoft office protocol discovery"),
        networks=("40.92.0.0/15", "40.107.0.0/16", "52.100.0.0/15", "52.102.0.0/16", "52.103.0.0/17", "104.47.0.0/17"),
        source="Microsoft Defender for Office 365 Safe Links and Office link discovery; networks: Exchange Online "
        "Protection, as published in spf.protection.outlook.com",
    ),
    Agent(
        "proofpoint", MACHINE, "scanner", user_agents=("proofpoint", "urldefense"),
        networks=("67.231.144.0/20", "148.163.128.0/19"),
        source="Proofpoint URL Defense (TAP) sandboxing; networks registered to Proofpoint, Inc. (ARIN)",
    ),
    Agent(
        "mimecast", MACHINE, "scanner", user_agents=("mimecast",), networks=("205.139.110.0/24", "207.211.30.0/24"),
        source="Mimecast URL Protect; networks: Mimecast US data centre ranges (Mimecast 'Data Centers and URLs')",
    ),
    Agent(
        "barracuda", MACHINE, "scanner", user_agents=("barracuda",), networks=("64.235.144.0/20", "209.222.80.0/21"),
        source="Barracuda Email Security Service link protection; networks as in _spf.ess.barracudanetworks.com",
    ),
    Agent("cisco-ironport", MACHINE, "scanner", user_agents=("ironport", "cisco secure email"),
          source="Cisco Secure Email (IronPort) URL filtering"),
    Agent("trend-micro", MACHINE, "scanner", user_agents=("trendmicro", "trend micro"),
          source="Trend Micro Email Security / Cloud App Security URL time-of-click"),
    Agent("symantec", MACHINE, "scanner", user_agents=("symantec", "messagelabs", "broadcom"),
          source="Symantec (Broadcom) Email Security.cloud, formerly MessageLabs, link following"),
    Agent("sophos", MACHINE, "scanner", user_agents=("sophos",), source="Sophos Email time-of-click protection"),
    Agent("fortinet", MACHINE, "scanner", user_agents=("fortiguard", "fortinet", "fortimail"),
          source="FortiMail / FortiGuard URL rating"),
    Agent("bitdefender", MACHINE, "scanner", user_agents=("bitdefender",), source="Bitdefender link scanning"),
    Agent(
        "headless-browser", MACHINE, "bot", user_agents=("headlesschrome", "phantomjs", "puppeteer", "playwright", "selenium"),
        source="automated browsers name themselves in the UA (Chrome adds 'HeadlessChrome' in headless mode)",
    ),
    Agent(
        "http-library", MACHINE, "bot",
        user_agents=(
            "curl/", "wget/", "python-requests", "python-urllib", "python-httpx", "aiohttp/", "go-http-client",
            "java/", "okhttp", "apache-httpclient", "libwww-perl", "node-fetch", "axios/", "undici",
        ),
        source="default user agents of HTTP libraries and command-line tools",
    ),
    Agent(
        "crawler", MACHINE, "bot",
        # "bot/" and "bot;" but not a bare "bot": phones named Cubot send "CUBOT_X30 …"
        user_agents=("bot/", "bot;", "crawler", "spider", "facebookexternalhit", "slurp", "linkpreview", "linkcheck"),
        source="crawlers and link-preview fetchers name themselves (Googlebot/…, Slackbot …, LinkPreview)",
    ),
)


@dataclass(frozen=True)
class Verdict:
    machine: bool
    reason: str = ""  # why it is a machine; "" for a person
    agent: str = ""  # the AGENTS entry that matched, if any (also for a person behind a proxy)
    # earlier clicks of a burst that were taken for human and must now be marked machine
    reclassify: tuple[RecentClick, ...] = ()


HUMAN = Verdict(machine=False)


@dataclass(frozen=True)
class RecentClick:
    """A click of the same message, remembered by the server for `ALL_LINKS_SECONDS`."""

    link: int  # the link's number; 0 is the honeypot
    seconds: float  # when, in the server's monotonic real time
    at: datetime  # when, in clock time, as stored in the event
    machine: bool


def judge_open(*, method: str, user_agent: str, ip: str, at: datetime, sent_at: datetime) -> Verdict:
    """Whether a pixel fetch was a person opening the message."""
    if method == "HEAD":
        return Verdict(machine=True, reason="head")
    agent = known_agent(user_agent, ip)
    if agent is not None and agent.kind == MACHINE:
        return Verdict(machine=True, reason=agent.reason, agent=agent.name)
    if (at - sent_at).total_seconds() < PREFETCH_SECONDS:
        return Verdict(machine=True, reason="prefetch", agent=agent.name if agent else "")
    return Verdict(machine=False, agent=agent.name) if agent is not None else HUMAN


def judge_click(
    *,
    method: str,
    user_agent: str,
    ip: str,
    at: datetime,
    sent_at: datetime,
    link: int,
    seconds: float,
    recent: Sequence[RecentClick],
    scanner_seconds: float,
) -> Verdict:
    """Whether a click was a person's; `recent` are the message's clicks the server remembers.

    `link` 0 is the honeypot; `seconds` is now in the same monotonic time as `recent`.
    """
    verdict = _judge_click_alone(method, user_agent, ip, at, sent_at, link, scanner_seconds)
    burst = [c for c in recent if 0 <= seconds - c.seconds <= ALL_LINKS_SECONDS]
    if len({c.link for c in burst} | {link}) < ALL_LINKS_DISTINCT:
        return verdict
    earlier_humans = tuple(c for c in burst if not c.machine)
    if verdict.machine:
        return Verdict(machine=True, reason=verdict.reason, agent=verdict.agent, reclassify=earlier_humans)
    return Verdict(machine=True, reason="all-links", agent=verdict.agent, reclassify=earlier_humans)


def _judge_click_alone(
    method: str, user_agent: str, ip: str, at: datetime, sent_at: datetime, link: int, scanner_seconds: float
) -> Verdict:
    if method == "HEAD":
        return Verdict(machine=True, reason="head")
    if link == 0:
        return Verdict(machine=True, reason="honeypot")
    agent = known_agent(user_agent, ip)
    if agent is not None and agent.kind == MACHINE:
        return Verdict(machine=True, reason=agent.reason, agent=agent.name)
    if not user_agent.strip():
        return Verdict(machine=True, reason="no-user-agent")
    if (at - sent_at).total_seconds() < scanner_seconds:
        return Verdict(machine=True, reason="too-soon", agent=agent.name if agent else "")
    return Verdict(machine=False, agent=agent.name) if agent is not None else HUMAN


def is_machine_request(*, method: str, user_agent: str, ip: str) -> bool:
    """Whether a request with no send time to go by (a confirm link) comes from a machine."""
    if method == "HEAD" or not user_agent.strip():
        return True
    agent = known_agent(user_agent, ip)
    return agent is not None and agent.kind == MACHINE


def known_agent(user_agent: str, ip: str) -> Agent | None:
    """The first entry of `AGENTS` this request matches, or None."""
    by_agent = _agent_by_user_agent(user_agent)
    by_network = _agent_by_network(ip)
    for agent in (by_agent, by_network):
        if agent is not None and agent.both and not (agent is by_agent and agent is by_network):
            continue
        if agent is not None:
            return agent
    return None


def _pattern() -> re.Pattern[str]:
    tokens = sorted({token for agent in AGENTS for token in agent.user_agents}, key=len, reverse=True)
    return re.compile("|".join(re.escape(token) for token in tokens))


_TOKENS = _pattern()
_AGENT_OF_TOKEN = {token: agent for agent in reversed(AGENTS) for token in agent.user_agents}
_AGENT_OF_EXACT = {agent.exact_user_agent: agent for agent in AGENTS if agent.exact_user_agent}
_NETWORKS = tuple(
    (ipaddress.ip_network(network), agent) for agent in AGENTS for network in agent.networks
)


# Both lookups are cached: the same few user agents and proxy addresses come back all day,
# and the pixel endpoint must stay cheap (see bench/tracking.py).
@lru_cache(maxsize=4096)
def _agent_by_user_agent(user_agent: str) -> Agent | None:
    lowered = user_agent.strip().lower()
    exact = _AGENT_OF_EXACT.get(lowered)
    if exact is not None:
        return exact
    match = _TOKENS.search(lowered)
    return _AGENT_OF_TOKEN[match.group(0)] if match else None


@lru_cache(maxsize=4096)
def _agent_by_network(ip: str) -> Agent | None:
    try:
        address = ipaddress.ip_address(ip.strip().split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for network, agent in _NETWORKS:
        if address.version == network.version and address in network:
            return agent
    return None
