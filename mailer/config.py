"""mailer.toml: the operator's configuration, every setting with a sensible default.

The file is read with the stdlib `tomllib`. Each section is a frozen dataclass whose fields
are the keys the section accepts; an unknown key or a value of the wrong type is a
ConfigError that names the key, its line and what to write instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import ipaddress
import logging
import os
import re
import socket
import stat
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from email.utils import parseaddr
from functools import cached_property
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

from mailer.clientaddress import trusted_network
from mailer.durations import parse_duration
from mailer.errors import ConfigError
from mailer.providers import DEFAULT_LIMITS, DEFAULT_SHARES, PROVIDERS, ProviderLimits

log = logging.getLogger("mailer.config")

CONFIG_NAME = "mailer.toml"
MAX_AUTO_BUILD_PROCESSES = 4  # beyond this the send loop, not building, is the bottleneck


@dataclass(frozen=True)
class RelayConfig:
    """Where messages go: one SMTP relay (direct-to-MX delivery comes later)."""

    host: str = "127.0.0.1"
    port: int = 25
    tls: str = "none"  # none | starttls | implicit
    verify_certificate: bool = True
    ca_file: str = ""  # CA bundle to trust for the relay (PEM); empty means the system's
    username: str = ""
    password_env: str = "MAILER_RELAY_PASSWORD"  # the password is read from this variable
    helo: str = ""  # the name to greet with; empty means this host's FQDN


@dataclass(frozen=True)
class IdentityConfig:
    """A sending identity that scenarios name in `sender:`."""

    from_: str = "Acme Marketing <news@acme.example>"
    reply_to: str = ""
    return_path: str = ""  # the envelope sender; empty means the From address
    domain: str = ""  # the Message-ID domain; empty means the From address's domain

    @cached_property  # parsed once: the send path asks for these per message
    def from_address(self) -> str:
        return parseaddr(self.from_)[1]

    @cached_property
    def from_name(self) -> str:
        return parseaddr(self.from_)[0]

    @cached_property
    def reply_to_address(self) -> str:
        return parseaddr(self.reply_to)[1]

    @cached_property
    def reply_to_name(self) -> str:
        return parseaddr(self.reply_to)[0]

    @cached_property
    def envelope_sender(self) -> str:
        return self.return_path or self.from_address

    @cached_property
    def message_id_domain(self) -> str:
        return self.domain or self.from_address.rpartition("@")[2]


@dataclass(frozen=True)
class DeliveryConfig:
    concurrency: int = 4  # SMTP connections open at once
    messages_per_connection: int = 100
    batch_size: int = 200  # messages claimed from the store per round
    mode: str = "relay"  # relay: everything to [relay]; direct: to each domain's MX hosts
    helo: str = ""  # direct mode's EHLO name (match the sending IP's PTR); empty: this host's FQDN
    require_tls: bool = False  # direct mode: never deliver without STARTTLS (any certificate)
    mta_sts: bool = True  # direct mode: honour recipient domains' MTA-STS policies (RFC 8461)
    # Check each From domain's DNS at start and refuse one that fails hard (mailer.sendingdomains).
    # Unwritten: on in direct mode; off with a relay, whose IP (what SPF checks) is not known here.
    check_domains: bool = False
    allow_failing_domains: tuple[str, ...] = ()  # From domains sent from despite hard failures
    # Processes that render and sign messages beside the send loop (mailer.buildprocesses);
    # 0: in the daemon's own process; None ("auto"): one per CPU beyond the first, at most 4.
    build_processes: int | None = None

    def builders(self, cpus: int | None) -> int:
        """How many build processes to start on a machine with `cpus` CPUs."""
        if self.build_processes is not None:
            return self.build_processes
        return max(0, min(MAX_AUTO_BUILD_PROCESSES, (cpus or 1) - 1))


@dataclass(frozen=True)
class TimeoutsConfig:
    """Per-phase SMTP timeouts in seconds; defaults are RFC 5321 4.5.3.2's minimums."""

    connect: float = 300.0  # 4.5.3.2.1 initial 220 message: 5 minutes
    mail: float = 300.0  # 4.5.3.2.2 MAIL command: 5 minutes
    rcpt: float = 300.0  # 4.5.3.2.3 RCPT command: 5 minutes
    data: float = 600.0  # 4.5.3.2.6 DATA termination: 10 minutes (covers 4.5.3.2.4-5 too)


@dataclass(frozen=True)
class RetryConfig:
    first: timedelta = timedelta(minutes=20)
    max_interval: timedelta = timedelta(hours=4)
    # RFC 5321 4.5.4.1: "give up ... should be at least 4-5 days"
    max_age: timedelta = timedelta(days=4)
    jitter: float = 0.2  # each delay is spread by ±20% so retries do not arrive in waves


@dataclass(frozen=True)
class ClockConfig:
    speed: float = 1.0  # virtual seconds per real second; the demo runs a week in seconds
    start: str = ""  # ISO 8601 instant the virtual clock starts at; empty means now


@dataclass(frozen=True)
class SchedulerConfig:
    poll_interval: timedelta = timedelta(minutes=1)  # in clock time
    entry_interval: timedelta = timedelta(minutes=5)  # how often entry rules are re-evaluated


@dataclass(frozen=True)
class BouncesConfig:
    """Where bounces come back, and when soft bounces add up to a suppression."""

    domain: str = ""  # the VERP bounce domain (its MX points at `listen`); empty: no VERP
    local_part: str = "bounces"  # VERP addresses are local_part+token@domain
    listen: str = "127.0.0.1:2525"  # the daemon's inbound SMTP listener, when domain is set
    soft_limit: int = 3  # this many soft bounces …
    soft_window: timedelta = timedelta(days=7)  # … within this window suppress the address


@dataclass(frozen=True)
class TrackingConfig:
    """The tracking and consent endpoints the daemon serves: pixel, click, unsubscribe, opt-in."""

    enabled: bool = True
    listen: str = "127.0.0.1:8080"  # loopback by default; put a TLS proxy in front in production
    base_url: str = ""  # the public https://… base of every link; empty means http://<listen>
    opens: bool = True  # insert the open pixel
    clicks: bool = True  # rewrite http(s) links through the click redirect
    unsubscribe_mailto: str = ""  # the List-Unsubscribe mailto; empty: unsubscribe+<token>@<bounces.domain>
    scanner_seconds: float = 10.0  # a click this soon after sending is a link scanner's
    queue_size: int = 10_000  # tracking events waiting to be written; beyond it the oldest are dropped
    flush_seconds: float = 0.2  # how often waiting events are written (real time)
    subscribe_per_hour: int = 10  # POST /subscribe allowed per client IP per hour
    # Reverse proxies in front (addresses or CIDR networks, normalized) whose X-Forwarded-For
    # names the visitor (mailer.clientaddress); empty: the header is ignored, it may be forged.
    trusted_proxies: tuple[str, ...] = ()

    @property
    def public_base(self) -> str:
        return (self.base_url or f"http://{self.listen}").rstrip("/")


@dataclass(frozen=True)
class ListConfig:
    """A mailing list's consent rules; scenarios enter leads from lists."""

    title: str = ""  # the name recipients see on the subscribe and unsubscribe pages
    double_opt_in: bool = False  # new subscribers confirm by email before they are mailed
    confirm_within: timedelta = timedelta(days=7)  # how long a confirmation link works
    sender: str = "default"  # the identity that sends the confirmation email


@dataclass(frozen=True)
class DKIMConfig:
    """DKIM signing of every message (RFC 6376); empty key file: messages go unsigned."""

    selector: str = "mailer"
    private_key_file: str = ""  # PEM RSA key (2048 bits or more); `mailer init` writes one
    ed25519_key_file: str = ""  # optional second signature, ed25519-sha256 (RFC 8463)
    # A selector names one key record, so the ed25519 key needs its own (RFC 8463 3);
    # empty means "<selector>-ed25519"
    ed25519_selector: str = ""
    domain: str = ""  # d=; empty means each identity's From domain (aligned for DMARC)

    def selector_for(self, algorithm: str) -> str:
        """The selector of the key signing with `algorithm` ("rsa" or "ed25519")."""
        if algorithm == "ed25519":
            return self.ed25519_selector or f"{self.selector}-ed25519"
        return self.selector


@dataclass(frozen=True)
class WarmupConfig:
    """The warm-up of new sending IPs and the throttle that answers receivers (mailer.warmup)."""

    enabled: bool = False  # off: no daily or hourly caps; provider rate limits and pauses still apply
    schedule: tuple[int, ...] = ()  # daily caps from day 1; empty ("default") = 50 a day, ×1.5 daily, 30 days
    spread_hours: int = 12  # hourly cap = daily cap / spread_hours …
    min_hourly: int = 10  # … but at least this many
    shares: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SHARES))  # most of a day one provider may take
    clean_messages: int = 50  # accepted messages …
    clean_period: timedelta = timedelta(minutes=30)  # … or time without a refusal that raise a slowed rate
    repeat_window: timedelta = timedelta(minutes=30)  # refusals this close together …
    pause_after: int = 3  # … this many times pause the provider
    first_pause: timedelta = timedelta(minutes=30)
    max_pause: timedelta = timedelta(hours=4)
    complaint_warn: float = 0.001  # Gmail: keep spam rates below 0.10% …
    complaint_stop: float = 0.003  # … and never reach 0.30% (support.google.com/mail/answer/81126)


@dataclass(frozen=True)
class SendingIPConfig:
    """A sending IP address ([ips.NAME]) and its warm-up."""

    address: str = ""  # the local address connections leave from (aiosmtplib source_address); empty: the system's
    helo: str = ""  # the EHLO name for this IP (its PTR name); empty: [delivery] / [relay] helo
    warmup: bool = True  # false for an IP that is already warm
    warmup_start: str = ""  # the first day it sends, e.g. "2026-01-05" (needed when [warmup] is enabled)


@dataclass(frozen=True)
class ApiConfig:
    """The HTTP API other systems call (mailer.api); every request needs an API key."""

    enabled: bool = True
    listen: str = "127.0.0.1:8081"  # loopback by default; another address is logged as a warning


@dataclass(frozen=True)
class WebhookConfig:
    """A receiver of signed event notifications ([webhooks.NAME], mailer.webhooks)."""

    url: str
    secret: str  # signs every call (HMAC-SHA256); at least 16 characters
    events: tuple[str, ...] = ("stage_changed", "account_stage_changed")  # a CRM's hand-off
    timeout: float = 10.0  # seconds per call (real time), connecting included
    max_attempts: int = 8  # then the delivery is given up as failed (mailer.webhooks.backoff)


@dataclass(frozen=True)
class ScoringEngineConfig:
    """The daemon's scoring engine (mailer.scoringengine); the rules are in scenarios/scoring.yaml."""

    enabled: bool = True
    # how often every lead is re-scored (clock time): decay lowers scores and cold leads are
    # recycled even when nothing happens to them; new events are scored within a second anyway
    refresh_interval: timedelta = timedelta(hours=1)
    batch: int = 500  # leads re-scored per transaction


@dataclass(frozen=True)
class Config:
    path: Path | None = None  # the file this came from; None for the embedded defaults
    store: Path = Path("mailer.db")
    scenarios: Path = Path("scenarios")
    templates: Path = Path("templates")
    secret_key_file: Path = Path("mailer.key")
    relay: RelayConfig = RelayConfig()
    identities: dict[str, IdentityConfig] = field(
        default_factory=lambda: {"default": IdentityConfig()}
    )
    delivery: DeliveryConfig = DeliveryConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    retry: RetryConfig = RetryConfig()
    clock: ClockConfig = ClockConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    bounces: BouncesConfig = BouncesConfig()
    tracking: TrackingConfig = TrackingConfig()
    lists: dict[str, ListConfig] = field(default_factory=dict)
    dkim: DKIMConfig = DKIMConfig()
    warmup: WarmupConfig = WarmupConfig()
    # no [ips]: one IP, the system's address, not warming: sending as before warm-up existed
    ips: dict[str, SendingIPConfig] = field(default_factory=lambda: {"default": SendingIPConfig(warmup=False)})
    providers: dict[str, ProviderLimits] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    api: ApiConfig = ApiConfig()
    webhooks: dict[str, WebhookConfig] = field(default_factory=dict)
    scoring: ScoringEngineConfig = ScoringEngineConfig()

    def list_config(self, name: str) -> ListConfig:
        """A list's rules; a list mailer.toml does not name has the defaults."""
        return self.lists.get(name) or ListConfig(title=name)

    def secret_keys(self) -> list[bytes]:
        """Every key in the key file, the current one first (older ones verify old links)."""
        try:
            text = self.secret_key_file.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(
                f"cannot read the secret key ({error.strerror})",
                file=str(self.secret_key_file),
                hint="run `mailer init` to create one",
            ) from None
        _warn_if_others_can_read(self.secret_key_file)
        keys = [line.strip().encode() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        key = keys[0] if keys else b""
        if len(key) < 32:
            raise ConfigError(
                "the secret key is shorter than 32 characters",
                file=str(self.secret_key_file),
                hint="delete it, then run `mailer init --force` to make a new one",
            )
        return keys

    def secret_key(self) -> bytes:
        """The current key, the one new links and addresses are signed with."""
        return self.secret_keys()[0]


def _warn_if_others_can_read(key_file: Path) -> None:
    """Warn, never refuse: containers and mounted secrets often come with odd modes, and
    refusing would stop the daemon over a file whose owner may have no say in its mode."""
    try:
        mode = stat.S_IMODE(key_file.stat().st_mode)
    except OSError:
        return
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "%s is open to other users (mode %o): whoever can read it can forge tracking and unsubscribe links; "
            "run `chmod 600 %s`", key_file, mode, key_file,
        )


_SECTIONS: dict[str, type] = {
    "relay": RelayConfig,
    "delivery": DeliveryConfig,
    "timeouts": TimeoutsConfig,
    "retry": RetryConfig,
    "clock": ClockConfig,
    "scheduler": SchedulerConfig,
    "bounces": BouncesConfig,
    "tracking": TrackingConfig,
    "dkim": DKIMConfig,
    "api": ApiConfig,
    "scoring": ScoringEngineConfig,
}
# RFC 1035 2.3.1 labels (letters, digits, hyphens; 63 octets), at least two of them
_HOSTNAME = re.compile(r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PATH_KEYS = ("store", "scenarios", "templates", "secret_key_file")
_TYPE_WORDS = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}


def load_config(path: Path) -> Config:
    """Read and validate mailer.toml; paths in it are relative to its directory."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(
            f"cannot read ({error.strerror})", file=str(path), hint="run `mailer init` to write one"
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        line = _decode_error_line(str(error))
        raise ConfigError(
            f"not valid TOML: {str(error).split(' (at')[0]}",
            file=str(path),
            line=line,
            hint="see the comments `mailer init` writes for the syntax",
        ) from None
    return parse_config(raw, text=text, path=path)


def parse_config(raw: dict[str, Any], *, text: str = "", path: Path | None = None) -> Config:
    """Build a Config from parsed TOML, naming the key of any mistake."""
    base = path.parent if path is not None else Path.cwd()
    where = _Locator(text, str(path) if path else CONFIG_NAME)
    values: dict[str, Any] = {"path": path}
    for key, value in raw.items():
        if key in _PATH_KEYS:
            values[key] = base / _expect(value, str, key, where)
        elif key == "delivery":
            values[key] = _delivery(value, where)
        elif key == "tracking":
            values[key] = _tracking(value, where)
        elif key in _SECTIONS:
            values[key] = _section(_SECTIONS[key], value, key, where)
        elif key == "identities":
            values[key] = _identities(value, where)
        elif key == "lists":
            values[key] = _lists(value, where)
        elif key == "webhooks":
            values[key] = _webhooks(value, where)
        elif key in _WARMUP_TABLES:
            values[key] = _WARMUP_TABLES[key](value, where)
        else:
            raise where.unknown(key, [*_PATH_KEYS, *_SECTIONS, "identities", "lists", "webhooks", *_WARMUP_TABLES])
    for key in _PATH_KEYS:
        values.setdefault(key, base / getattr(Config, key))
    config = Config(**values)
    for name in ("private_key_file", "ed25519_key_file"):
        value = getattr(config.dkim, name)
        if value and not Path(value).is_absolute():
            config = dataclasses.replace(config, dkim=dataclasses.replace(config.dkim, **{name: str(base / value)}))
    if config.dkim.ed25519_key_file and not config.dkim.private_key_file:
        raise where.error(
            "dkim.ed25519_key_file", "an Ed25519 signature goes beside an RSA one, not alone",
            "set [dkim] private_key_file too: many receivers verify only RSA signatures and treat mail whose"
            " only signature they cannot verify as unsigned (RFC 6376 6.1)",
        )  # fmt: skip
    if config.relay.ca_file and not Path(config.relay.ca_file).is_absolute():
        config = dataclasses.replace(config, relay=dataclasses.replace(config.relay, ca_file=str(base / config.relay.ca_file)))
    if config.relay.tls not in ("none", "starttls", "implicit"):
        raise where.error("relay.tls", f"unknown TLS mode {config.relay.tls!r}", 'use "none", "starttls" or "implicit"')
    if config.clock.start:
        try:
            start = datetime.fromisoformat(config.clock.start)
        except ValueError:
            start = None
        if start is None or start.tzinfo is None:
            raise where.error("clock.start", f"not an ISO 8601 instant: {config.clock.start!r}", 'write e.g. "2026-01-05T08:00:00+09:00"')
    if config.clock.speed <= 0:
        raise where.error("clock.speed", "must be greater than 0", "1 is real time; 3600 runs an hour a second")
    if not 0 <= config.retry.jitter < 1:  # a spread of ±100% or more would allow waits of 0 or less
        raise where.error("retry.jitter", "must be at least 0 and less than 1", "0.2 spreads each delay by ±20%")
    if config.retry.first <= timedelta(0):
        raise where.error("retry.first", "must be longer than 0", 'write e.g. "20m"')
    for name in ("concurrency", "messages_per_connection", "batch_size"):
        if getattr(config.delivery, name) < 1:
            raise where.error(f"delivery.{name}", "must be at least 1", "")
    if config.delivery.mode not in ("relay", "direct"):
        raise where.error("delivery.mode", f"unknown delivery mode {config.delivery.mode!r}", 'use "relay" or "direct"')
    if config.delivery.helo and not _HOSTNAME.fullmatch(config.delivery.helo):
        raise where.error("delivery.helo", f"not a host name: {config.delivery.helo!r}", 'write the sending IP\'s PTR name, e.g. "mail.acme.example"')
    if not 1 <= config.relay.port <= 65535:
        raise where.error("relay.port", f"{config.relay.port} is not a TCP port", "use 25, 587 or 465, or your relay's port")
    for name in ("connect", "mail", "rcpt", "data"):
        if getattr(config.timeouts, name) <= 0:
            raise where.error(f"timeouts.{name}", "must be more than 0 seconds", "the defaults are RFC 5321's minimums")
    for dotted, value in (
        ("retry.max_age", config.retry.max_age),
        ("scheduler.poll_interval", config.scheduler.poll_interval),
        ("scheduler.entry_interval", config.scheduler.entry_interval),
        ("bounces.soft_window", config.bounces.soft_window),
        ("scoring.refresh_interval", config.scoring.refresh_interval),
    ):
        if value < timedelta(seconds=1):
            raise where.error(dotted, "must be at least 1s", "e.g. 1m, 4h or 4d")
    if config.bounces.soft_limit < 1:
        raise where.error("bounces.soft_limit", "must be at least 1", "")
    if config.scoring.batch < 1:
        raise where.error("scoring.batch", "must be at least 1", "500 is the default")
    _check_tracking(config.tracking, where)
    _check_listen("api.listen", config.api.listen, where)
    _check_warmup(config, where)
    for name, list_config in config.lists.items():
        if list_config.sender not in config.identities:
            raise where.error(f"lists.{name}.sender", f"no identity named {list_config.sender!r}", "name one of [identities.*]")
    return config


def _delivery(value: Any, where: _Locator) -> DeliveryConfig:
    table = dict(_expect(value, dict, "delivery", where))
    allowed = table.pop("allow_failing_domains", [])
    builders = table.pop("build_processes", "auto")
    if builders != "auto" and (isinstance(builders, bool) or not isinstance(builders, int) or not 0 <= builders <= 64):
        raise where.error("delivery.build_processes", f"expected a number of processes or \"auto\", got {builders!r}",
                          '0 builds in the daemon\'s process; "auto" starts one per CPU beyond the first')
    if not isinstance(allowed, list) or not all(isinstance(name, str) and _HOSTNAME.fullmatch(name) for name in allowed):
        raise where.error("delivery.allow_failing_domains", f"not a list of domain names: {allowed!r}", 'write e.g. ["acme.example"]')
    delivery: DeliveryConfig = _section(DeliveryConfig, table, "delivery", where)
    if "check_domains" not in table:
        delivery = dataclasses.replace(delivery, check_domains=delivery.mode == "direct")
    return dataclasses.replace(
        delivery, allow_failing_domains=tuple(name.lower() for name in allowed), build_processes=None if builders == "auto" else builders
    )


def _warmup(value: Any, where: _Locator) -> WarmupConfig:
    table = dict(_expect(value, dict, "warmup", where))
    schedule, shares = table.pop("schedule", "default"), table.pop("shares", None)
    warmup: WarmupConfig = _section(WarmupConfig, table, "warmup", where)
    if schedule != "default":
        if not isinstance(schedule, list) or not schedule or not all(type(cap) is int and cap > 0 for cap in schedule):
            raise where.error("warmup.schedule", f"not a list of daily caps: {schedule!r}", 'write e.g. [50, 75, 110, 170] or "default"')
        for day, (before, cap) in enumerate(zip(schedule, schedule[1:]), start=2):
            if cap < before:  # a ramp that shrinks is a typo, not a plan
                raise where.error("warmup.schedule", f"day {day}'s cap {cap} is below day {day - 1}'s {before}", "a warm-up ramp only grows")
        warmup = dataclasses.replace(warmup, schedule=tuple(schedule))
    if shares is not None:
        written = _expect(shares, dict, "warmup.shares", where)
        for name, share in written.items():
            if name not in PROVIDERS:
                raise where.unknown(f"warmup.shares.{name}", [f"warmup.shares.{p}" for p in PROVIDERS])
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
                raise where.error(f"warmup.shares.{name}", f"not a share between 0 and 1: {share!r}", "e.g. 0.4 lets it take 40% of a day's cap")
        warmup = dataclasses.replace(warmup, shares={**DEFAULT_SHARES, **{k: float(v) for k, v in written.items()}})
    return warmup


def _ips(value: Any, where: _Locator) -> dict[str, SendingIPConfig]:
    table = _expect(value, dict, "ips", where)
    ips: dict[str, SendingIPConfig] = {}
    addresses: dict[str, str] = {}
    for name, section in table.items():
        ip = _section(SendingIPConfig, section, f"ips.{name}", where)
        if ip.address:
            try:
                address = str(ipaddress.ip_address(ip.address))
            except ValueError:
                raise where.error(f"ips.{name}.address", f"not an IP address: {ip.address!r}", 'write e.g. "192.0.2.10" or "2001:db8::10"') from None
            if address in addresses:
                raise where.error(f"ips.{name}.address", f"{address} is also [ips.{addresses[address]}]", "each sending IP once")
            addresses[address] = name
        if ip.warmup_start:
            try:
                date.fromisoformat(ip.warmup_start)
            except ValueError:
                raise where.error(f"ips.{name}.warmup_start", f"not a date: {ip.warmup_start!r}", 'write e.g. "2026-01-05"') from None
        ips[name] = ip
    if not ips:
        raise where.error("ips", "no sending IP", "add an [ips.main] table, or remove [ips] to send from the system's address")
    return ips


def _providers(value: Any, where: _Locator) -> dict[str, ProviderLimits]:
    table = _expect(value, dict, "providers", where)
    limits = dict(DEFAULT_LIMITS)
    for name, section in table.items():
        if name not in PROVIDERS:
            raise where.unknown(f"providers.{name}", [f"providers.{p}" for p in PROVIDERS])
        written = _section(ProviderLimits, section, f"providers.{name}", where)
        keys = _expect(section, dict, f"providers.{name}", where)
        for key in keys:
            if getattr(written, key) < (0 if key == "per_minute" else 1):
                raise where.error(f"providers.{name}.{key}", "must be at least " + ("0 (no limit)" if key == "per_minute" else "1"), "")
        limits[name] = dataclasses.replace(limits[name], **{key: getattr(written, key) for key in keys})
    return limits


_WARMUP_TABLES: dict[str, Any] = {"warmup": _warmup, "ips": _ips, "providers": _providers}


def _check_warmup(config: Config, where: _Locator) -> None:
    warmup = config.warmup
    for name in ("spread_hours", "min_hourly", "clean_messages", "pause_after"):
        if getattr(warmup, name) < 1:
            raise where.error(f"warmup.{name}", "must be at least 1", "")
    if warmup.spread_hours > 24:
        raise where.error("warmup.spread_hours", "a day has 24 hours", "12 spreads a day's cap over at least 12 hours")
    for name in ("clean_period", "repeat_window", "first_pause", "max_pause"):
        if getattr(warmup, name) < timedelta(minutes=1):
            raise where.error(f"warmup.{name}", "must be at least 1m", 'e.g. "30m"')
    if warmup.max_pause < warmup.first_pause:
        raise where.error("warmup.max_pause", "is shorter than first_pause", "pauses grow from first_pause up to max_pause")
    if not 0 < warmup.complaint_warn <= warmup.complaint_stop < 1:
        raise where.error("warmup.complaint_stop", "must be above complaint_warn and below 1", "Gmail's are 0.001 (warn) and 0.003 (stop)")
    if warmup.enabled:
        if not any(ip.warmup for ip in config.ips.values()):
            raise where.error("warmup.enabled", "no sending IP is warming", 'add [ips.main] with address and warmup_start = "2026-01-05"')
        for name, ip in config.ips.items():
            if ip.warmup and not ip.warmup_start:
                raise where.error(
                    f"ips.{name}.warmup_start", "a warming IP needs the day it started",
                    'write e.g. warmup_start = "2026-01-05", or warmup = false for an IP that is already warm',
                )


def _tracking(value: Any, where: _Locator) -> TrackingConfig:
    table = dict(_expect(value, dict, "tracking", where))
    proxies = table.pop("trusted_proxies", [])
    dotted, example = "tracking.trusted_proxies", 'write your proxy\'s own address, e.g. ["127.0.0.1", "::1"] or ["10.0.0.0/8"]'
    if not isinstance(proxies, list) or not all(isinstance(entry, str) for entry in proxies):
        raise where.error(dotted, f"not a list of addresses: {proxies!r}", example)
    networks = []
    for entry in proxies:
        try:
            networks.append(str(trusted_network(entry)))
        except ValueError as error:
            raise where.error(dotted, str(error), example) from None
    tracking: TrackingConfig = _section(TrackingConfig, table, "tracking", where)
    return dataclasses.replace(tracking, trusted_proxies=tuple(dict.fromkeys(networks)))


def _check_tracking(tracking: TrackingConfig, where: _Locator) -> None:
    _check_listen("tracking.listen", tracking.listen, where, example="127.0.0.1:8080")
    if tracking.base_url and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", tracking.base_url):
        raise where.error("tracking.base_url", f"not an http(s) base URL: {tracking.base_url!r}", 'write e.g. "https://t.acme.example"')
    if tracking.unsubscribe_mailto and not _is_address(tracking.unsubscribe_mailto):
        raise where.error("tracking.unsubscribe_mailto", "not an email address", 'write e.g. "unsubscribe@acme.example"')
    for name in ("queue_size", "subscribe_per_hour"):
        if getattr(tracking, name) < 1:
            raise where.error(f"tracking.{name}", "must be at least 1", "")
    for name in ("scanner_seconds", "flush_seconds"):
        if getattr(tracking, name) <= 0:
            raise where.error(f"tracking.{name}", "must be more than 0", "")


def _check_listen(dotted: str, listen: str, where: _Locator, *, example: str = "127.0.0.1:8081") -> None:
    try:
        listen_address(listen, field=dotted, example=example)
    except ConfigError as error:
        raise where.error(dotted, error.problem, error.hint or "") from None


def listen_address(listen: str, *, field: str, example: str) -> tuple[str, int]:
    """A `listen` setting, HOST:PORT ([IPv6]:PORT), as the host and port a server binds;
    ConfigError naming `field` for anything else."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"not HOST:PORT: {listen!r}", field=field, hint=f'write e.g. "{example}"')
    return host.strip("[]"), int(port)


@contextmanager
def binding(listen: str, *, field: str, file: Path | None) -> Iterator[None]:
    """Around a server's bind of `listen`: the setting's fault becomes a ConfigError naming
    file and field; any other failure passes as it is."""
    try:
        yield
    except OSError as error:
        mistake = listen_error(error, listen=listen, field=field, file=file)
        if mistake is None:
            raise
        raise mistake from None


def listen_error(error: OSError, *, listen: str, field: str, file: Path | None) -> ConfigError | None:
    """The setting's fault behind a server's failed bind of `listen`, named by file and field;
    None for a failure that is not the setting's (out of file descriptors, say)."""
    host, port = listen_address(listen, field=field, example="127.0.0.1:8080")
    if isinstance(error, socket.gaierror):
        problem, hint = f"cannot resolve {host!r}", "write an IP address, e.g. 127.0.0.1"
    elif error.errno == errno.EADDRINUSE:
        problem, hint = f"{listen} is in use (another mailer serve, or another program)", "choose a free port"
    elif error.errno == errno.EADDRNOTAVAIL:
        problem = f"{host} is not an address of this machine"
        hint = "listen on 127.0.0.1, on 0.0.0.0 (every address) or on one of this host's own addresses"
    elif error.errno == errno.EACCES:
        # Linux lets only privileged processes bind ports below net.ipv4.ip_unprivileged_port_start (1024).
        problem = f"not allowed to listen on port {port}"
        hint = "choose a port from 1024 up (a proxy can serve 80 and 443), or grant CAP_NET_BIND_SERVICE"
    else:
        return None
    return ConfigError(problem, file=str(file) if file is not None else None, field=field, hint=hint)


# HMAC-SHA256 keys shorter than this are guessable offline from one signed call; 16
# characters of a random string are ~96 bits (Stripe's whsec_ secrets are longer still).
MIN_WEBHOOK_SECRET = 16


def _webhooks(value: Any, where: _Locator) -> dict[str, WebhookConfig]:
    from mailer.webhooks import WEBHOOK_EVENT_TYPES  # it imports this module

    table = _expect(value, dict, "webhooks", where)
    webhooks = {}
    for name, section in table.items():
        dotted = f"webhooks.{name}"
        written = dict(_expect(section, dict, dotted, where))
        for key in ("url", "secret"):
            if key not in written:
                raise where.error(dotted, f"no {key}", 'write url = "https://crm.example/hooks/mailer" and a secret of 16+ characters')
        events = written.pop("events", list(WebhookConfig.events))
        if not isinstance(events, list) or not events or not all(isinstance(event, str) for event in events):
            raise where.error(f"{dotted}.events", f"not a list of event types: {events!r}", 'write e.g. ["stage_changed"]')
        for event in events:
            if event not in WEBHOOK_EVENT_TYPES:
                close = difflib.get_close_matches(event, WEBHOOK_EVENT_TYPES, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise where.error(f"{dotted}.events", f"unknown event type {event!r}", hint + "known: " + ", ".join(WEBHOOK_EVENT_TYPES))
        webhook: WebhookConfig = _section(WebhookConfig, written, dotted, where)
        webhook = dataclasses.replace(webhook, events=tuple(dict.fromkeys(events)))
        url = urlsplit(webhook.url)
        if url.scheme not in ("http", "https") or not url.hostname or any(char.isspace() for char in webhook.url):
            raise where.error(f"{dotted}.url", f"not an http(s) URL: {webhook.url!r}", 'write e.g. "https://crm.example/hooks/mailer"')
        if len(webhook.secret) < MIN_WEBHOOK_SECRET:
            raise where.error(f"{dotted}.secret", f"shorter than {MIN_WEBHOOK_SECRET} characters", "use a long random string, e.g. from `openssl rand -hex 32`")
        if webhook.timeout <= 0:
            raise where.error(f"{dotted}.timeout", "must be more than 0 seconds", "10 is the default")
        if webhook.max_attempts < 1:
            raise where.error(f"{dotted}.max_attempts", "must be at least 1", "8 tries over about 8 hours is the default")
        webhooks[name] = webhook
    return webhooks


def _lists(value: Any, where: _Locator) -> dict[str, ListConfig]:
    table = _expect(value, dict, "lists", where)
    lists = {}
    for name, section in table.items():
        list_config = _section(ListConfig, section, f"lists.{name}", where)
        if not list_config.title:
            list_config = dataclasses.replace(list_config, title=name)
        if list_config.confirm_within < timedelta(minutes=1):
            raise where.error(f"lists.{name}.confirm_within", "must be at least 1m", 'e.g. "7d"')
        lists[name] = list_config
    return lists


def _identities(value: Any, where: _Locator) -> dict[str, IdentityConfig]:
    table = _expect(value, dict, "identities", where)
    identities = {}
    for name, section in table.items():
        identity = _section(IdentityConfig, section, f"identities.{name}", where)
        for key, written, address in (
            ("from", identity.from_, identity.from_address),
            ("reply_to", identity.reply_to, identity.reply_to_address),
            ("return_path", identity.return_path, identity.return_path),
        ):
            if (key == "from" or written) and not _is_address(address):
                raise where.error(f"identities.{name}.{key}", f"no valid address in {written!r}", 'write e.g. "Acme Marketing <news@acme.example>"')
        identities[name] = identity
    if not identities:
        raise where.error("identities", "no sending identity", "add an [identities.default] table with a `from` key")
    return identities


def _is_address(address: str) -> bool:
    from mailer.mime import wire_address  # the same check the assembler makes

    try:
        wire_address(address)
    except ValueError:
        return False
    return True


def _section(cls: type, value: Any, name: str, where: _Locator) -> Any:
    table = _expect(value, dict, name, where)
    hints = get_type_hints(cls)
    fields = {f.name.rstrip("_"): f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, item in table.items():
        if key not in fields:
            raise where.unknown(f"{name}.{key}", [f"{name}.{k}" for k in fields])
        kind = hints[fields[key]]
        dotted = f"{name}.{key}"
        if kind is timedelta:
            text = _expect(item, str, dotted, where)
            try:
                kwargs[fields[key]] = parse_duration(text)
            except ValueError:
                raise where.error(dotted, f"not a duration: {text!r}", 'write e.g. "20m", "4h" or "4d"') from None
        elif kind is float and isinstance(item, int) and not isinstance(item, bool):
            kwargs[fields[key]] = float(item)
        else:
            kwargs[fields[key]] = _expect(item, kind, dotted, where)
    return cls(**kwargs)


def _expect(value: Any, kind: type, key: str, where: _Locator) -> Any:
    if isinstance(value, str) and any(char in value for char in "\r\n\x00"):
        # Values end up in headers and SMTP commands: a line break would inject a header.
        raise where.error(key, "contains a line break or NUL", "write the value on one line")
    if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        return value
    word = _TYPE_WORDS.get(kind, "a table" if kind is dict else kind.__name__)
    raise where.error(key, f"expected {word}, got {type(value).__name__} {value!r}", f"write {key.rpartition('.')[2]} as {word}")


def _decode_error_line(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


class _Locator:
    """Finds the line of a dotted key in the TOML text, for error messages."""

    def __init__(self, text: str, file: str) -> None:
        self.lines = text.splitlines()
        self.file = file

    def line_of(self, dotted: str) -> int | None:
        *tables, key = dotted.split(".")
        table = ".".join(tables)
        current = ""
        for number, line in enumerate(self.lines, start=1):
            stripped = line.strip()
            header = re.fullmatch(r"\[\s*([^\]]+?)\s*\]\s*(?:#.*)?", stripped)
            if header:
                current = header.group(1)
                if current == dotted:
                    return number
                continue
            if current == table and re.match(rf"{re.escape(key)}\s*=", stripped):
                return number
        return None

    def error(self, dotted: str, problem: str, hint: str) -> ConfigError:
        return ConfigError(problem, file=self.file, line=self.line_of(dotted), field=dotted, hint=hint or None)

    def unknown(self, dotted: str, valid: list[str]) -> ConfigError:
        # compare the last names only: a shared "delivery." prefix makes any two keys look alike
        leaves = {key.rpartition(".")[2]: key for key in valid}
        close = difflib.get_close_matches(dotted.rpartition(".")[2], list(leaves), n=1)
        hint = f"did you mean {leaves[close[0]]}?" if close else "valid keys: " + ", ".join(valid)
        return self.error(dotted, "unknown key", hint)


STARTER_CONFIG = """\
# mailer.toml: the configuration of one mailer workspace. Every key is optional; the value
# shown is the default. Paths are relative to this file. Durations: 20m, 4h, 4d, 1w.

store = "mailer.db"              # SQLite database (WAL mode)
scenarios = "scenarios"          # scenario files, *.yaml
templates = "templates"          # Jinja2 templates (sandboxed)
secret_key_file = "mailer.key"   # signs tracking tokens; keep it private (mode 0600)

[relay]                          # the SMTP server every message is handed to
host = "127.0.0.1"
port = 25
tls = "none"                     # "none", "starttls" or "implicit" (port 465)
verify_certificate = true
ca_file = ""                     # PEM CA bundle to trust for the relay; empty = the system's
username = ""                    # AUTH user; empty for no AUTH
password_env = "MAILER_RELAY_PASSWORD"   # the AUTH password is read from this variable
helo = ""                        # the EHLO name; empty means this host's name

[identities.default]             # scenarios choose an identity with `sender: default`
from = "Acme Marketing <news@acme.example>"
reply_to = ""
return_path = ""                 # envelope sender (bounces go here); empty = the From address
domain = ""                      # Message-ID domain; empty = the From address's domain

[delivery]
concurrency = 4                  # SMTP connections open at once
messages_per_connection = 100
batch_size = 200
mode = "relay"                   # "relay" ([relay] above) or "direct" (to each domain's MX hosts)
helo = ""                        # direct: EHLO name, the sending IP's PTR name; empty = this host's
require_tls = false              # direct: refuse to deliver without STARTTLS
mta_sts = true                   # direct: honour MTA-STS policies (RFC 8461)
# check_domains = true           # at start, check each From domain's SPF, DKIM and DMARC and refuse
                                 # (pause) one that fails hard; unwritten: on in direct mode, off with
                                 # a relay; `mailer check-domain` shows the same report
allow_failing_domains = []       # From domains sent from despite hard failures, e.g. ["acme.example"]
build_processes = "auto"         # processes rendering and DKIM-signing beside the send loop:
                                 # "auto" = one per CPU beyond the first (at most 4); 0 = none

[timeouts]                       # seconds; defaults are RFC 5321 4.5.3.2's minimums
connect = 300
mail = 300
rcpt = 300
data = 600

[retry]                          # 4xx replies: jittered exponential backoff
first = "20m"
max_interval = "4h"
max_age = "4d"                   # then the message expires (RFC 5321 4.5.4.1)
jitter = 0.2

[clock]
speed = 1.0                      # 1 is real time; the demo runs a week in seconds
start = ""                       # ISO 8601 start of the virtual clock; empty = now

[scheduler]
poll_interval = "1m"
entry_interval = "5m"

[bounces]                        # bounces come back to local_part+<signed token>@domain (VERP)
domain = ""                      # e.g. "bounce.acme.example", its MX pointing at this host
local_part = "bounces"
listen = "127.0.0.1:2525"        # the daemon's inbound SMTP listener for that domain
soft_limit = 3                   # this many soft bounces within soft_window suppress an address
soft_window = "7d"

[tracking]                       # open pixel, click redirect, unsubscribe and opt-in pages
enabled = true
listen = "127.0.0.1:8080"        # served by `mailer serve`; loopback unless you mean otherwise
base_url = ""                    # public base of links, e.g. "https://t.acme.example"
opens = true                     # insert the open pixel
clicks = true                    # rewrite http(s) links through the click redirect
unsubscribe_mailto = ""          # List-Unsubscribe mailto; empty = unsubscribe+<token>@<bounces.domain>
scanner_seconds = 10             # a click this soon after sending counts as a link scanner's
subscribe_per_hour = 10          # form posts allowed per client IP per hour
# trusted_proxies = ["127.0.0.1"]  # behind nginx/Caddy: the proxy's own address, so visitors' come from X-Forwarded-For

[api]                            # the HTTP API for CRMs and apps: leads, events, stage moves
enabled = true                   # every call needs a key: `mailer api-key add NAME`
listen = "127.0.0.1:8081"        # loopback unless a proxy with TLS sits in front

# [webhooks.crm]                 # signed POSTs to a receiver (header Mailer-Signature: t=…,v1=…)
# url = "https://crm.example/hooks/mailer"
# secret = "a long random string"  # 16+ characters; the receiver verifies HMAC-SHA256 with it
# events = ["stage_changed", "account_stage_changed"]   # also score_changed, grade_changed,
#                                # form_submitted, page_visit, product_event
# timeout = 10                   # seconds per call
# max_attempts = 8               # retried after 30s, 2m, 10m, 30m, 1h, 2h, 4h, then given up

[scoring]                        # lead scores, grades and stages from scenarios/scoring.yaml
enabled = true
refresh_interval = "1h"          # re-score every lead this often: decay and recycling
batch = 500                      # leads re-scored per transaction

[dkim]                           # sign every message (RFC 6376); empty key file = unsigned
selector = "mailer"
private_key_file = ""            # PEM RSA key, e.g. "dkim.pem"
ed25519_key_file = ""            # optional second signature beside the RSA one (RFC 8463), never alone
ed25519_selector = ""            # its own selector (one key record each); empty = "<selector>-ed25519"
domain = ""                      # d=; empty = each identity's From domain

[warmup]                         # new sending IPs: daily caps that grow, split across providers
enabled = false                  # true: IPs with warmup_start follow the schedule (see `mailer warmup status`)
schedule = "default"             # or daily caps from day 1, e.g. [50, 75, 110, 170]; "default": 50, ×1.5 a day, 30 days
spread_hours = 12                # hourly cap = daily cap / spread_hours …
min_hourly = 10                  # … but at least this
clean_messages = 50              # after a 421, this many accepted …
clean_period = "30m"             # … or this long without one raise the rate a step
repeat_window = "30m"            # pause_after refusals within this pause the provider
pause_after = 3
first_pause = "30m"              # pauses double from here …
max_pause = "4h"                 # … up to here
complaint_warn = 0.001           # Gmail's spam-rate guidance: under 0.1% …
complaint_stop = 0.003           # … never 0.3%

# [warmup.shares]                # the most of an IP's day one provider may take (defaults shown)
# gmail = 0.4
# microsoft = 0.3
# yahoo = 0.15
# apple = 0.1
# other = 0.5                    # also every provider without a share of its own

# [ips.main]                     # a sending IP; without any [ips], the system's address, not warming
# address = "192.0.2.10"         # the local address connections leave from
# helo = "mail.acme.example"     # its PTR name
# warmup = true                  # false for an IP that is already warm
# warmup_start = "2026-01-05"    # its first sending day

# [providers.microsoft]          # limits per sending IP for a receiving provider (0: none)
# concurrency = 5
# per_connection = 50
# per_minute = 300

# [lists.newsletter]             # consent rules of a list that scenarios enter from
# title = "Acme newsletter"
# double_opt_in = true           # subscribers confirm by email first
# confirm_within = "7d"
# sender = "default"
"""
