"""`check_domain` and `mailer check-domain` against a loopback DNS server holding two sending domains."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailer.dkim import PrivateKey, public_key_record
from mailer.dnstest import ZoneServer
from mailer.domaincheck import DomainReport, Finding, check_domain, make_resolver
from mailer.errors import UserError

GOOD_IP = "192.0.2.10"
BAD_IP = "192.0.2.20"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def world(key: PrivateKey = KEY) -> dict[str, list[Any]]:
    """good.example does everything right; bad.example has no DMARC, a broken SPF include and no FCrDNS."""
    return {
        "good.example": [{"TXT": f"v=spf1 ip4:{GOOD_IP} -all"}, {"MX": [10, "mx.good.example"]}],
        "mx.good.example": [{"A": "192.0.2.25"}],
        "mailer._domainkey.good.example": [{"TXT": public_key_record(key)}],
        "_dmarc.good.example": [{"TXT": "v=DMARC1; p=none; rua=mailto:dmarc@good.example"}],
        "10.2.0.192.in-addr.arpa": [{"PTR": "mail.good.example"}],
        "mail.good.example": [{"A": GOOD_IP}],
        "bad.example": [{"TXT": "v=spf1 include:nowhere.example -all"}, {"MX": [10, "mx.good.example"]}],
        "mailer._domainkey.bad.example": [{"TXT": public_key_record(key)}],
        "20.2.0.192.in-addr.arpa": [{"PTR": "host.bad.example"}],
        "host.bad.example": [{"A": "192.0.2.99"}],
    }


@pytest.fixture
async def dns_server() -> AsyncIterator[ZoneServer]:
    async with ZoneServer(world()) as server:
        yield server


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "dkim.pem"
    path.write_bytes(KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


async def check(server: ZoneServer, domain: str, **options: Any) -> DomainReport:
    arguments: dict[str, Any] = {"ip": GOOD_IP, "selector": "mailer", "relay_tls": True}
    arguments.update(options)
    return await check_domain(domain, resolver=server.resolver(timeout=1.0), **arguments)


def finding(report: DomainReport, name: str) -> Finding:
    (found,) = [item for item in report.findings if item.check == name]
    return found


async def test_a_correct_domain_is_ready(dns_server: ZoneServer, key_file: Path) -> None:
    """SPF pass, a matching DKIM key, DMARC p=none, MX and FCrDNS make a domain ready, every check passing."""
    report = await check(dns_server, "good.example", dkim_key=key_file)
    assert report.ready, report.findings
    assert [item.check for item in report.findings] == ["spf", "dkim", "dmarc", "alignment", "mx", "fcrdns", "tls", "unsubscribe"]
    assert {item.status for item in report.findings} == {"pass"}
    assert report.hard_failures == () and report.unmet == ()
    assert "matches" in finding(report, "dkim").detail and "2048 bits" in finding(report, "dkim").detail
    assert finding(report, "fcrdns").detail == f"{GOOD_IP} → mail.good.example → {GOOD_IP}"


async def test_a_broken_domain_is_not_ready_and_gets_the_exact_records(dns_server: ZoneServer) -> None:
    """No DMARC, an SPF include of a domain without SPF and a PTR name that does not point back each get their record to publish."""
    report = await check(dns_server, "bad.example", ip=BAD_IP)
    assert not report.ready
    assert report.unmet == ("spf", "dmarc", "fcrdns")
    spf = finding(report, "spf")
    assert spf.status == "fail" and spf.hard and "permerror" in spf.detail and "nowhere.example" in spf.detail
    assert spf.fix == f'bad.example. TXT "v=spf1 ip4:{BAD_IP} -all"'
    dmarc = finding(report, "dmarc")
    assert dmarc.status == "fail" and not dmarc.hard
    assert dmarc.fix == '_dmarc.bad.example. TXT "v=DMARC1; p=none; rua=mailto:dmarc@bad.example"'
    assert finding(report, "fcrdns").fix == f"host.bad.example. A {BAD_IP}"
    # DKIM still aligns with the From domain, so alignment is possible and passes.
    assert finding(report, "alignment").status == "pass"
    assert [item.check for item in report.hard_failures] == ["spf"]


async def test_an_include_that_does_not_cover_the_ip_is_an_spf_fail(dns_server: ZoneServer) -> None:
    """An include that authorizes other addresses ends in -all: a hard fail, fixed by adding the IP first."""
    zones = world()
    zones["bad.example"] = [{"TXT": "v=spf1 include:_spf.provider.example -all"}, {"MX": [10, "mx.good.example"]}]
    zones["_spf.provider.example"] = [{"TXT": "v=spf1 ip4:198.51.100.0/24 -all"}]
    dns_server.set_zones(zones)
    spf = finding(await check(dns_server, "bad.example", ip=BAD_IP), "spf")
    assert spf.status == "fail" and spf.hard and ": fail" in spf.detail
    assert spf.fix == f'bad.example. TXT "v=spf1 ip4:{BAD_IP} include:_spf.provider.example -all"'


async def test_a_softfail_is_not_ready_but_not_hard(dns_server: ZoneServer) -> None:
    """~all for the sending IP fails readiness without making the daemon refuse to send."""
    zones = world()
    zones["good.example"] = [{"TXT": "v=spf1 mx ~all"}, {"MX": [10, "mx.good.example"]}]
    dns_server.set_zones(zones)
    report = await check(dns_server, "good.example")
    spf = finding(report, "spf")
    assert spf.status == "fail" and not spf.hard and "softfail" in spf.detail
    assert spf.fix == f'good.example. TXT "v=spf1 ip4:{GOOD_IP} mx ~all"'
    assert not report.ready and report.hard_failures == ()


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (None, "no key record"),
        ("v=DKIM1; k=rsa; p=", "revoked"),
        ("v=DKIM1; k=rsa; p=QUJD", "invalid"),
        (public_key_record(OTHER_KEY), "not the public half"),
    ],
)
async def test_dkim_problems_are_hard_with_the_record_from_the_key(
    dns_server: ZoneServer, key_file: Path, record: str | None, expected: str
) -> None:
    """A missing, revoked, unparseable or foreign DKIM record is a hard failure whose fix is the configured key's record."""
    zones = world()
    if record is None:
        del zones["mailer._domainkey.good.example"]
    else:
        zones["mailer._domainkey.good.example"] = [{"TXT": record}]
    dns_server.set_zones(zones)
    report = await check(dns_server, "good.example", dkim_key=key_file)
    dkim = finding(report, "dkim")
    assert dkim.status == "fail" and dkim.hard and expected in dkim.detail
    assert dkim.fix.startswith('mailer._domainkey.good.example. TXT "v=DKIM1; k=rsa; p=MIIB')
    assert dkim.fix.count('" "') == 1  # a 2048-bit key is two 255-octet strings
    assert not report.ready


async def test_short_rsa_keys_warn_and_ed25519_keys_pass(dns_server: ZoneServer, tmp_path: Path) -> None:
    """A 1024-bit RSA key is a warning that leaves the domain ready (RFC 8301); a matching Ed25519 key passes."""
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    dns_server.set_zones(world(short))
    report = await check(dns_server, "good.example")
    assert finding(report, "dkim").status == "warn" and "1024 bits" in finding(report, "dkim").detail
    assert report.ready
    edwards = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "ed.pem"
    path.write_bytes(edwards.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    dns_server.set_zones(world(edwards))
    dkim = finding(await check(dns_server, "good.example", dkim_key=path), "dkim")
    assert dkim.status == "pass" and "ed25519" in dkim.detail and "matches" in dkim.detail


EDWARDS = ed25519.Ed25519PrivateKey.generate()


def pem(key: PrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


async def test_the_ed25519_selector_is_checked_beside_the_rsa_one(dns_server: ZoneServer, tmp_path: Path) -> None:
    """With a second (Ed25519) selector, its record is checked too: a matching key passes after the RSA finding."""
    zones = world()
    zones["mailer-ed25519._domainkey.good.example"] = [{"TXT": public_key_record(EDWARDS)}]
    dns_server.set_zones(zones)
    report = await check(dns_server, "good.example", ed25519_selector="mailer-ed25519", ed25519_key=pem(EDWARDS, tmp_path / "ed.pem"))
    assert [item.check for item in report.findings][:3] == ["spf", "dkim", "dkim-ed25519"]
    second = finding(report, "dkim-ed25519")
    assert second.status == "pass" and "ed25519" in second.detail and "matches" in second.detail
    assert report.ready


@pytest.mark.parametrize(
    ("published", "expected"),
    [
        (None, "no key record at mailer-ed25519._domainkey.good.example"),
        (ed25519.Ed25519PrivateKey.generate(), "not the public half of"),
        (KEY, "but this selector signs with ed25519"),
    ],
)
async def test_a_missing_or_wrong_ed25519_key_warns_and_never_stops_sending(
    dns_server: ZoneServer, tmp_path: Path, published: PrivateKey | None, expected: str
) -> None:
    """A missing, foreign or RSA key at the Ed25519 selector is a warning with the record to publish: the RSA
    signature still carries the mail, so the domain stays ready and nothing is hard."""
    zones = world()
    if published is not None:
        zones["mailer-ed25519._domainkey.good.example"] = [{"TXT": public_key_record(published)}]
    dns_server.set_zones(zones)
    report = await check(dns_server, "good.example", ed25519_selector="mailer-ed25519", ed25519_key=pem(EDWARDS, tmp_path / "ed.pem"))
    second = finding(report, "dkim-ed25519")
    assert second.status == "warn" and not second.hard and expected in second.detail, second
    assert "never stops sending" in second.detail
    assert second.fix.startswith('mailer-ed25519._domainkey.good.example. TXT "v=DKIM1; k=ed25519; p=')
    assert report.ready and report.hard_failures == ()


async def test_an_rsa_key_given_as_the_ed25519_key_is_a_user_error(dns_server: ZoneServer, key_file: Path) -> None:
    """`ed25519_key` must hold an Ed25519 key: an RSA one is refused naming the field."""
    with pytest.raises(UserError) as raised:
        await check(dns_server, "good.example", ed25519_selector="mailer-ed25519", ed25519_key=key_file)
    assert raised.value.field == "ed25519_key" and "not an Ed25519 key" in str(raised.value)


async def test_without_a_selector_nothing_is_signed_and_alignment_rests_on_spf(dns_server: ZoneServer) -> None:
    """No selector: DKIM and unsubscribe fail softly, and a return path of another organization leaves no alignment (hard)."""
    zones = world()
    zones["bounces.elsewhere.example"] = [{"TXT": f"v=spf1 ip4:{GOOD_IP} -all"}, {"MX": [10, "mx.good.example"]}]
    dns_server.set_zones(zones)
    report = await check(dns_server, "good.example", selector=None, return_path_domain="bounces.elsewhere.example")
    assert finding(report, "dkim").status == "fail" and not finding(report, "dkim").hard
    assert finding(report, "unsubscribe").status == "fail"
    assert finding(report, "spf").status == "pass"  # checked for the return path domain
    assert finding(report, "bounce-mx").status == "pass"
    alignment = finding(report, "alignment")
    assert alignment.status == "fail" and alignment.hard
    assert [item.check for item in report.hard_failures] == ["alignment"]


async def test_strict_spf_alignment_needs_the_same_name(dns_server: ZoneServer) -> None:
    """With aspf=s a bounce subdomain does not align, so without DKIM there is no alignment at all."""
    zones = world()
    zones["_dmarc.good.example"] = [{"TXT": "v=DMARC1; p=reject; aspf=s"}]
    zones["bounce.good.example"] = [{"TXT": f"v=spf1 ip4:{GOOD_IP} -all"}, {"MX": [0, "."]}]
    dns_server.set_zones(zones)
    report = await check(dns_server, "good.example", selector=None, return_path_domain="bounce.good.example")
    assert finding(report, "alignment").hard and "aspf=s" in finding(report, "alignment").detail
    bounce_mx = finding(report, "bounce-mx")
    assert bounce_mx.status == "fail" and "null MX" in bounce_mx.detail
    relaxed = await check(dns_server, "good.example", return_path_domain="bounce.good.example")
    assert finding(relaxed, "alignment").status == "pass" and "DKIM d=good.example" in finding(relaxed, "alignment").detail


async def test_a_subdomain_inherits_the_organizational_dmarc_record(dns_server: ZoneServer) -> None:
    """From news.good.example with no record of its own, the policy is the sp= of _dmarc.good.example (RFC 7489 6.6.3)."""
    zones = world()
    zones["_dmarc.good.example"] = [{"TXT": "v=DMARC1; p=reject; sp=quarantine"}]
    zones["news.good.example"] = [{"MX": [10, "mx.good.example"]}]
    dns_server.set_zones(zones)
    dmarc = finding(await check(dns_server, "news.good.example", selector=None, ip=None), "dmarc")
    assert dmarc.status == "pass" and "p=quarantine (from _dmarc.good.example)" in dmarc.detail
    assert ("_dmarc.news.good.example", "TXT") in dns_server.queries


@pytest.mark.parametrize(
    ("records", "problem"),
    [
        ([{"TXT": "v=DMARC1; p=monitor"}], "not none, quarantine or reject"),
        ([{"TXT": "v=DMARC1; p=none"}, {"TXT": "v=DMARC1; p=reject"}], "2 DMARC records"),
    ],
)
async def test_an_invalid_dmarc_record_is_hard(dns_server: ZoneServer, records: list[Any], problem: str) -> None:
    """An invalid DMARC record, or two of them, is a hard failure with a valid record to publish instead."""
    zones = world()
    zones["_dmarc.good.example"] = records
    dns_server.set_zones(zones)
    dmarc = finding(await check(dns_server, "good.example"), "dmarc")
    assert dmarc.hard and problem in dmarc.detail
    assert dmarc.fix == '_dmarc.good.example. TXT "v=DMARC1; p=none; rua=mailto:dmarc@good.example"'


async def test_timeouts_are_temporary_errors_not_absence(dns_server: ZoneServer) -> None:
    """A DNS timeout is reported as a temporary error, fails readiness, and is never hard or 'absent'."""
    zones = world()
    zones["_dmarc.good.example"] = ["TIMEOUT"]
    zones["mailer._domainkey.good.example"] = ["TIMEOUT"]
    dns_server.set_zones(zones)
    report = await check_domain(
        "good.example", resolver=dns_server.resolver(timeout=0.3), ip=GOOD_IP, selector="mailer", relay_tls=True
    )
    for name in ("dmarc", "dkim"):
        item = finding(report, name)
        assert item.status == "fail" and not item.hard and "temporary DNS error" in item.detail and item.fix == ""
    assert not report.ready and report.hard_failures == ()


async def test_mx_without_records_falls_back_to_the_address(dns_server: ZoneServer) -> None:
    """A From domain with only an A record warns (implicit MX, RFC 5321 5.1); with nothing at all it fails."""
    zones = world()
    zones["good.example"] = [{"TXT": f"v=spf1 ip4:{GOOD_IP} -all"}, {"A": "192.0.2.80"}]
    dns_server.set_zones(zones)
    assert finding(await check(dns_server, "good.example"), "mx").status == "warn"
    zones["good.example"] = [{"TXT": f"v=spf1 ip4:{GOOD_IP} -all"}]
    dns_server.set_zones(zones)
    mx = finding(await check(dns_server, "good.example"), "mx")
    assert mx.status == "fail" and "cannot receive mail" in mx.detail


@pytest.mark.parametrize(
    ("domain", "options", "field"),
    [
        ("not a domain", {}, "domain"),
        ("good.example", {"ip": "192.0.2.300"}, "--ip"),
        ("good.example", {"selector": "bad selector"}, "selector"),
    ],
)
async def test_malformed_input_is_a_user_error(dns_server: ZoneServer, domain: str, options: dict[str, Any], field: str) -> None:
    """A malformed domain, IP or selector raises UserError naming the field, before any DNS query."""
    with pytest.raises(UserError) as raised:
        await check(dns_server, domain, **options)
    assert raised.value.field == field
    assert dns_server.queries == []


def test_make_resolver_asks_only_the_named_server() -> None:
    """--nameserver takes HOST, HOST:PORT and [IPv6]:PORT, and the resolver asks that server only."""
    for text, host, port in (("127.0.0.1", "127.0.0.1", 53), ("127.0.0.1:5353", "127.0.0.1", 5353), ("[::1]:5300", "::1", 5300), ("::1", "::1", 53)):
        resolver = make_resolver(text)
        assert (resolver.nameservers, resolver.port) == ([host], port)
    with pytest.raises(UserError):
        make_resolver("127.0.0.1:99999")


# -- the command, as a subprocess against the loopback server --------------------------------


async def run_cli(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailer", "check-domain", *args,
        cwd=tmp_path, env=os.environ.copy(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_exits_0_for_a_ready_domain_with_its_json_report(dns_server: ZoneServer, tmp_path: Path, key_file: Path) -> None:
    """`mailer check-domain good.example --json` against the loopback server exits 0 and says ready."""
    code, out, err = await run_cli(
        tmp_path, "good.example", "--ip", GOOD_IP, "--selector", "mailer", "--dkim-key", str(key_file),
        "--nameserver", f"127.0.0.1:{dns_server.port}", "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["ready"] is True and report["hard_failures"] == []
    # No mailer.toml here: whether the relay uses TLS is not known, a warning only.
    assert {item["check"]: item["status"] for item in report["findings"]}["tls"] == "warn"


async def test_cli_checks_the_ed25519_selector_it_is_given(dns_server: ZoneServer, tmp_path: Path, key_file: Path) -> None:
    """`--ed25519-selector` and `--ed25519-key` add the second key's finding to the report."""
    dns_server.set_zones(world())
    code, out, err = await run_cli(
        tmp_path, "good.example", "--ip", GOOD_IP, "--selector", "mailer", "--dkim-key", str(key_file),
        "--ed25519-selector", "mailer-ed25519", "--ed25519-key", str(pem(EDWARDS, tmp_path / "ed.pem")),
        "--nameserver", f"127.0.0.1:{dns_server.port}", "--json",
    )  # fmt: skip
    assert code == 0, err
    statuses = {item["check"]: item["status"] for item in json.loads(out)["findings"]}
    assert statuses["dkim"] == "pass" and statuses["dkim-ed25519"] == "warn"


async def test_cli_exits_1_for_a_broken_domain_and_prints_the_fixes(dns_server: ZoneServer, tmp_path: Path) -> None:
    """The broken domain exits 1; JSON names the hard failure and the terminal report shows ✗ and the records to publish."""
    nameserver = f"127.0.0.1:{dns_server.port}"
    code, out, _ = await run_cli(tmp_path, "bad.example", "--ip", BAD_IP, "--selector", "mailer", "--nameserver", nameserver, "--json")
    assert code == 1
    report = json.loads(out)
    assert report["ready"] is False and report["hard_failures"] == ["spf"]
    code, out, _ = await run_cli(tmp_path, "bad.example", "--ip", BAD_IP, "--selector", "mailer", "--nameserver", nameserver)
    assert code == 1
    assert "✗ dmarc" in out and '    _dmarc.bad.example. TXT "v=DMARC1; p=none; rua=mailto:dmarc@bad.example"' in out
    assert "✓ dkim" in out and "bad.example: not ready for bulk sending: spf, dmarc, fcrdns" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("good.example", "--ip", "192.0.2.300"), "--ip"),
        (("good.example", "--nameserver", "dns.example"), "--nameserver"),
    ],
)
async def test_cli_user_errors_exit_2_with_one_line(dns_server: ZoneServer, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    """A bad IP or nameserver is one `mailer: error:` line and exit code 2, no traceback."""
    code, out, err = await run_cli(tmp_path, *args)
    assert code == 2 and out == ""
    assert err.startswith("mailer: error: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


async def test_cli_says_so_when_the_dns_server_never_answers(tmp_path: Path) -> None:
    """A --nameserver nobody answers on is one line and exit 2 within seconds, not a report of temporary errors."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never read: queries go unanswered
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        began = time.monotonic()
        code, out, err = await run_cli(tmp_path, "good.example", "--ip", GOOD_IP, "--nameserver", f"127.0.0.1:{port}")
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith(f"mailer: error: --nameserver: the DNS server 127.0.0.1:{port} did not answer in 2 s")
    assert "nothing was checked" in err and time.monotonic() - began < 10
