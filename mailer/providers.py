"""Who receives a message: the mailbox provider behind a domain, recognised by its MX hosts.

Warm-up caps and throttling are per receiving provider, because reputation is: Gmail keeps
one view of a sending IP whether the recipient is @gmail.com or a company on Google Workspace.
So the provider is read from the MX host names (``acme.co.jp`` with MX ``aspmx.l.google.com``
is Gmail); the recipient domain is only a fallback for the well-known consumer domains when no
MX is known yet (relay delivery never looks one up). Anything else is ``other``.

Both tables are data. Sources for the MX names:

- Google: Sisimai's rhost table (go-sisimai ``rhost/rhost.go``: ``aspmx.l.google.com``,
  ``gmail-smtp-in.l.google.com``); Google Workspace's MX values
  (https://support.google.com/a/answer/174125: ``aspmx.l.google.com``, ``alt1-4.aspmx.l.google.com``,
  ``aspmx2-5.googlemail.com``, and since 2023 the single ``smtp.google.com``).
- Microsoft: Sisimai (``.protection.outlook.com``, ``.prod.outlook.com``); consumer domains
  use ``<domain>.olc.protection.outlook.com``; Exchange Online provisions new domains under
  ``mx.microsoft`` (Microsoft 365 message center MC1048624, 2025).
- Yahoo / AOL: Sisimai (``.yahoodns.net``: ``mta5.am0.yahoodns.net``, ``mx-aol.mail.gm0.yahoodns.net``).
- Apple iCloud: Sisimai (``.mail.icloud.com``).
- NTT docomo (``mfsmax.docomo.ne.jp``) and KDDI au (``.ezweb.ne.jp``, ``msmx.au.com``): Sisimai;
  SoftBank (``mx.softbank.ne.jp``) and Yahoo! JAPAN (``mx1-5.mail.yahoo.co.jp``, a different
  company from Yahoo Inc since 2019's LY Corp split): their published MX records.
- GMX / WEB.DE / mail.com (United Internet: ``*.emig.gmx.net``, ``mx-ha*.web.de``, ``*.mail.com``),
  Mail.ru (``mxs.mail.ru``), Yandex (``mx.yandex.ru``, ``mx.yandex.net``), QQ (``mx*.qq.com``,
  Sisimai's Tencent): their published MX records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

OTHER = "other"

# provider → MX host suffixes (a leading dot: any host under it) or exact host names.
MX_HOSTS: dict[str, tuple[str, ...]] = {
    "gmail": (".google.com", ".googlemail.com"),
    "microsoft": (".protection.outlook.com", ".prod.outlook.com", ".mx.microsoft", ".hotmail.com", ".outlook.com"),
    "yahoo": (".yahoodns.net",),
    "apple": (".mail.icloud.com", ".mail.me.com", ".mail.mac.com"),
    "yahoo-japan": (".mail.yahoo.co.jp",),
    "docomo": (".docomo.ne.jp",),
    "au": (".ezweb.ne.jp", "msmx.au.com", ".au.com"),
    "softbank": (".softbank.ne.jp", ".softbank.jp"),
    "gmx": (".gmx.net", ".web.de", ".mail.com"),
    "mailru": (".mail.ru",),
    "yandex": (".yandex.ru", ".yandex.net", ".yandex.com"),
    "qq": (".qq.com",),
}

# Recipient domains whose provider is known without an MX lookup. A trailing dot matches the
# name under any public suffix (``hotmail.`` is hotmail.com, hotmail.co.uk, hotmail.fr …).
RECIPIENT_DOMAINS: dict[str, tuple[str, ...]] = {
    "gmail": ("gmail.com", "googlemail.com"),
    "microsoft": ("outlook.", "hotmail.", "live.", "msn.com", "windowslive.com", "passport.com"),
    # yahoo.co.jp is Yahoo! JAPAN, listed below; it must not fall into Yahoo Inc's bucket
    "yahoo-japan": ("yahoo.co.jp", "ybb.ne.jp"),
    "yahoo": ("yahoo.", "ymail.com", "rocketmail.com", "aol.", "aim.com", "verizon.net"),
    "apple": ("icloud.com", "me.com", "mac.com"),
    "docomo": ("docomo.ne.jp",),
    "au": ("ezweb.ne.jp", "au.com"),
    "softbank": ("softbank.ne.jp", "i.softbank.jp"),
    "gmx": ("gmx.", "web.de", "mail.com"),
    "mailru": ("mail.ru", "bk.ru", "inbox.ru", "list.ru"),
    "yandex": ("yandex.", "ya.ru"),
    "qq": ("qq.com", "foxmail.com"),
}

PROVIDERS: tuple[str, ...] = (*MX_HOSTS, OTHER)


@dataclass(frozen=True)
class ProviderLimits:
    """How hard one sending IP may push one provider; 0 means no limit of that kind."""

    concurrency: int = 5  # SMTP connections open at once
    per_connection: int = 100  # messages before a connection is closed and a new one opened
    per_minute: int = 0  # messages a minute


# No provider publishes these numbers; they are deliberately conservative starting points
# that `[providers.NAME]` overrides. For scale, Postfix's default per-destination concurrency
# is 20 (postconf(5) default_destination_concurrency_limit). The Japanese mobile carriers are
# known to refuse bursts (421 or "too many connections", Sisimai's docomo/au rules), hence two
# connections and short sessions. `other` is every other receiver in one bucket: a rate limit
# on it would throttle unrelated companies together, so it has none; its connection limits are
# meant per MX host.
DEFAULT_LIMITS: dict[str, ProviderLimits] = {
    "gmail": ProviderLimits(concurrency=10, per_connection=100, per_minute=600),
    "microsoft": ProviderLimits(concurrency=5, per_connection=50, per_minute=300),
    "yahoo": ProviderLimits(concurrency=5, per_connection=20, per_minute=300),
    "apple": ProviderLimits(concurrency=5, per_connection=50, per_minute=200),
    "yahoo-japan": ProviderLimits(concurrency=5, per_connection=50, per_minute=200),
    "docomo": ProviderLimits(concurrency=2, per_connection=20, per_minute=60),
    "au": ProviderLimits(concurrency=2, per_connection=20, per_minute=60),
    "softbank": ProviderLimits(concurrency=2, per_connection=20, per_minute=60),
    "gmx": ProviderLimits(concurrency=5, per_connection=50, per_minute=200),
    "mailru": ProviderLimits(concurrency=5, per_connection=50, per_minute=200),
    "yandex": ProviderLimits(concurrency=5, per_connection=50, per_minute=200),
    "qq": ProviderLimits(concurrency=5, per_connection=50, per_minute=200),
    OTHER: ProviderLimits(concurrency=5, per_connection=100, per_minute=0),
}

# The largest part of an IP's daily warm-up cap each provider may take. They may add up to more
# than 1: the IP's own cap bounds the total, and a list that is mostly Gmail should not leave
# the other shares' budget unused. A provider without its own share has `other`'s.
DEFAULT_SHARES: dict[str, float] = {"gmail": 0.4, "microsoft": 0.3, "yahoo": 0.15, "apple": 0.1, OTHER: 0.5}


def _host_matches(host: str, patterns: tuple[str, ...]) -> bool:
    return any(host.endswith(p) if p.startswith(".") else host == p for p in patterns)


def _domain_matches(domain: str, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        if pattern.endswith("."):
            # "hotmail." matches hotmail.com, hotmail.fr and hotmail.co.jp: after the name come
            # one or two short labels that look like a public suffix (not live.acme.example)
            head, _, rest = domain.partition(".")
            labels = rest.split(".")
            if f"{head}." == pattern and rest and len(labels) <= 2 and all(0 < len(x) <= 3 for x in labels):
                return True
        elif domain == pattern:
            return True
    return False


def _clean(name: str) -> str:
    return name.strip().rstrip(".").lower()


def provider_of_mx(host: str) -> str | None:
    """The provider whose MX host this is, or None."""
    host = "." + _clean(host)  # so that an exact name matches its own ".suffix" form too
    for provider, patterns in MX_HOSTS.items():
        if _host_matches(host, patterns) or _host_matches(host[1:], patterns):
            return provider
    return None


def provider_of_domain(domain: str) -> str | None:
    """The provider of a well-known recipient domain, or None."""
    domain = _clean(domain)
    for provider, patterns in RECIPIENT_DOMAINS.items():
        if _domain_matches(domain, patterns):
            return provider
    return None


def provider_for(mx_hosts: Sequence[str], recipient_domain: str) -> str:
    """The receiving provider: by the MX hosts (in preference order) when known, else by domain.

    When MX hosts are known and none belongs to a known provider, the domain runs its own mail
    (or a gateway such as Mimecast sits in front): that is `other`, whatever the domain's name.
    """
    if mx_hosts:
        for host in mx_hosts:
            provider = provider_of_mx(host)
            if provider is not None:
                return provider
        return OTHER
    return provider_of_domain(recipient_domain) or OTHER
