"""Tests for mailer.providers: the receiving provider, by MX host first and recipient domain second."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.providers import DEFAULT_LIMITS, DEFAULT_SHARES, MX_HOSTS, OTHER, PROVIDERS, provider_for


@pytest.mark.parametrize(
    ("mx", "provider"),
    [
        ("gmail-smtp-in.l.google.com", "gmail"),
        ("alt2.gmail-smtp-in.l.google.com.", "gmail"),
        ("ASPMX.L.GOOGLE.COM", "gmail"),
        ("aspmx3.googlemail.com", "gmail"),
        ("smtp.google.com", "gmail"),
        ("acme-co-jp.mail.protection.outlook.com", "microsoft"),
        ("hotmail-com.olc.protection.outlook.com", "microsoft"),
        ("acme-com.a-v1.mx.microsoft", "microsoft"),
        ("mta5.am0.yahoodns.net", "yahoo"),
        ("mx-aol.mail.gm0.yahoodns.net", "yahoo"),
        ("mx01.mail.icloud.com", "apple"),
        ("mx1.mail.yahoo.co.jp", "yahoo-japan"),
        ("mfsmax.docomo.ne.jp", "docomo"),
        ("lsean.ezweb.ne.jp", "au"),
        ("msmx.au.com", "au"),
        ("mx00.emig.gmx.net", "gmx"),
        ("mx-ha03.web.de", "gmx"),
        ("mxs.mail.ru", "mailru"),
        ("mx.yandex.net", "yandex"),
        ("mx3.qq.com", "qq"),
    ],
)
def test_providers_are_recognised_by_their_mx_hosts(mx: str, provider: str) -> None:
    """A company domain on Google Workspace or Microsoft 365 is that provider: reputation is theirs."""
    assert provider_for([mx], "acme.example") == provider


def test_the_first_known_mx_in_preference_order_decides() -> None:
    """An unknown primary MX in front of a known backup still names the backup's provider."""
    assert provider_for(["mx.acme.example", "alt1.aspmx.l.google.com"], "acme.example") == "gmail"


def test_a_domain_with_its_own_mx_is_other_whatever_its_name() -> None:
    """Known MX hosts win over the domain: a gateway in front of Microsoft makes it `other`."""
    assert provider_for(["eu-smtp-inbound-1.mimecast.com"], "outlook.com") == OTHER
    assert provider_for(["mx.acme.example"], "gmail.com") == OTHER


def test_look_alike_hosts_are_not_the_provider() -> None:
    """Only whole labels match: notgoogle.com and google.com.evil.example are nobody's."""
    assert provider_for(["mx.notgoogle.com"], "x.example") == OTHER
    assert provider_for(["aspmx.l.google.com.evil.example"], "x.example") == OTHER


@pytest.mark.parametrize(
    ("domain", "provider"),
    [
        ("gmail.com", "gmail"),
        ("GoogleMail.com.", "gmail"),
        ("outlook.jp", "microsoft"),
        ("hotmail.co.uk", "microsoft"),
        ("live.com", "microsoft"),
        ("yahoo.com", "yahoo"),
        ("yahoo.co.uk", "yahoo"),
        ("aol.com", "yahoo"),
        ("yahoo.co.jp", "yahoo-japan"),
        ("icloud.com", "apple"),
        ("me.com", "apple"),
        ("docomo.ne.jp", "docomo"),
        ("ezweb.ne.jp", "au"),
        ("i.softbank.jp", "softbank"),
        ("web.de", "gmx"),
        ("mail.ru", "mailru"),
        ("acme.co.jp", OTHER),
        ("live.acme.example", OTHER),
        ("gmail.com.evil.example", OTHER),
    ],
)
def test_well_known_recipient_domains_are_the_fallback_without_mx(domain: str, provider: str) -> None:
    """Before any MX lookup (relay delivery), consumer domains still name their provider."""
    assert provider_for([], domain) == provider


def test_every_provider_has_limits_and_the_big_four_have_shares() -> None:
    """Policy is complete as data: each provider the tables can return has its limits."""
    assert set(PROVIDERS) == set(MX_HOSTS) | {OTHER}
    assert set(DEFAULT_LIMITS) == set(PROVIDERS)
    assert {"gmail", "microsoft", "yahoo", "apple", OTHER} <= set(DEFAULT_SHARES)


@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", max_size=40), max_size=4), st.text(max_size=40))
def test_any_input_names_a_known_provider(mx_hosts: list[str], domain: str) -> None:
    """Whatever DNS or a lead list holds, the answer is one of the providers, never an error."""
    assert provider_for(mx_hosts, domain) in PROVIDERS
