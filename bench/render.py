"""Render benchmark: personalized step emails to final wire bytes, ours against the naive way.

Ours: `mailer.compose.Composer` (CSS inlined once per template version, MIME skeleton
prepared once per step, per recipient only the templates run and the parts are encoded).
Naive, measured in the same run on a sample: Jinja render → premailer per message →
`email.message.EmailMessage` → bytes.

DKIM: every message is then signed with a 2048-bit RSA key made for the run
(`mailer.dkim`, rsa-sha256 through OpenSSL), against dkimpy's own signer on a sample as the
baseline.

Correctness checks (exit 1 when any fails): every message we produce parses with the stdlib
parser, carries the lead's address, subject and personal values in both parts; on a sample
our HTML is the same document as the naive pipeline's; and on a sample dkimpy verifies our
DKIM signatures.

    python bench/render.py            # N = 10,000
    python bench/render.py --quick    # N = 1,000, for CI

The last line of output is JSON with msgs_per_s, naive_msgs_per_s and ratio, and for DKIM
dkim_us_per_msg, dkimpy_us_per_msg, dkim_ratio and msgs_per_s_signed.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import html as lxml_html

from mailer.compose import Composer, context_for
from mailer.config import IdentityConfig
from mailer.dkim import DKIMSigner, public_key_record, sign_message
from mailer.leads import Lead
from mailer.linkrewrite import MessageLinks, track_anchors
from mailer.links import Links
from mailer.examples_data import examples
from mailer.mime import Mailbox, make_message_id, reference_assemble
from mailer.render import Renderer, inline_css
from mailer.scenario import Entry, Reentry, Scenario, Step
from mailer.tokens import Signer

HERE = Path(__file__).resolve().parent
TARGET_RATIO = 25.0
TARGET_RATE = 5000.0
DKIM_DOMAIN = "northwind.example"
DKIM_SELECTOR = "bench"
FIRST = ["太郎", "花子", "Alice", "Bob", "Zoë", "María", "Łukasz", "健", "Chloé", "Ngozi"]
LAST = ["山田", "鈴木", "Nguyen", "O'Hara", "Müller", "García", "Kowalski", "佐藤", "Dubois", "Okafor"]
TOPICS = ["dashboards", "data quality", "forecasting", "governance", "SQL", "alerts"]


def workspace_templates() -> Path:
    """The shipped layout with the benchmark's step templates beside it, in a temp folder."""
    folder = Path(tempfile.mkdtemp(prefix="mailer-bench-"))
    shutil.copyfile(examples().templates / "layout.html", folder / "layout.html")
    for source in (HERE / "templates").iterdir():
        shutil.copyfile(source, folder / source.name)
    return folder


def make_leads(count: int, rng: random.Random) -> list[Lead]:
    leads = []
    for number in range(count):
        articles = [
            {
                "slug": f"post-{rng.randrange(1000)}",
                "title": f"{rng.choice(TOPICS).title()} in practice, part {rng.randrange(1, 9)}",
                "minutes": rng.randrange(3, 15),
                "topic": rng.choice(TOPICS),
            }
            for _ in range(4)
        ]
        leads.append(
            Lead(
                id=number + 1,
                email=f"lead{number}@example{number % 97}.com",
                first_name=f"{rng.choice(FIRST)}{number}",
                last_name=rng.choice(LAST),
                company=f"Company {number} & Co <Ltd>",
                job_title=rng.choice(["CTO", "Head of Data", "情報システム部長", ""]),
                attributes={
                    "id_token": f"t{number:08x}",
                    "language": "ja" if number % 3 == 0 else "en",
                    "dashboards": rng.randrange(100),
                    "sources": rng.randrange(20),
                    "alerts": rng.randrange(10),
                    "articles": articles,
                },
            )
        )
    return leads


SCENARIO = Scenario(
    name="bench",
    file="bench.yaml",
    sender="default",
    entry=Entry(list_name="bench", where=None),
    steps=(
        Step(
            id="digest",
            wait=__import__("datetime").timedelta(0),
            subject="{{ lead.first_name }}, your week at {{ lead.company }} — 今週のまとめ",
            template="bench_digest.html",
            text_template="bench_digest.txt",
            send_window=None,
            condition=None,
            line=1,
        ),
    ),
    exit_when=None,
    reentry=Reentry(allowed=False, after=__import__("datetime").timedelta(0)),
    timezone="UTC",
    send_window=None,
)
IDENTITY = IdentityConfig(from_="Northwind Analytics <hello@northwind.example>")
# Every message is tracked as the daemon sends it: click links, open pixel, honeypot, unsubscribe.
LINKS = Links(Signer([b"bench-secret-key-" * 3]), "https://t.northwind.example")


def run_ours(composer: Composer, leads: list[Lead], now: datetime) -> tuple[float, list[bytes]]:
    step = SCENARIO.steps[0]
    composer.compose(SCENARIO, step, leads[0], message_id="<warm@up>", now=now, message_row=0)  # compile once
    ids = [make_message_id("northwind.example") for _ in leads]
    start = time.perf_counter()
    wires = [
        composer.compose(SCENARIO, step, lead, message_id=mid, now=now, message_row=row).wire
        for row, (lead, mid) in enumerate(zip(leads, ids), 1)
    ]
    return time.perf_counter() - start, wires


def naive_one(renderer: Renderer, lead: Lead, now: datetime, row: int) -> bytes:
    step = SCENARIO.steps[0]
    compiled = renderer.step(subject=step.subject, template=step.template, text_template=step.text_template)
    links = MessageLinks(LINKS, message=row, sent_at=now, list_name=SCENARIO.entry.list_name or "")
    context = context_for(lead, SCENARIO, step, unsubscribe_url=links.unsubscribe_url)
    html = inline_css(track_anchors(renderer.html_env.get_template(step.template).render(context), links))
    html = links.decorate_html(html, footer=not compiled.html_unsubscribe)
    text = renderer.text_env.get_template(step.text_template or "").render(context)
    text = links.track_text(text, footer=not compiled.text_unsubscribe)
    subject = renderer.text_env.from_string(step.subject).render(context)
    return reference_assemble(
        sender=Mailbox(IDENTITY.from_address, IDENTITY.from_name),
        reply_to=None,
        to=Mailbox(lead.email, lead.display_name),
        subject=subject,
        message_id=make_message_id("northwind.example"),
        date=now,
        text=text,
        html=html,
    )


def run_naive(renderer: Renderer, leads: list[Lead], now: datetime) -> tuple[float, list[bytes]]:
    naive_one(renderer, leads[0], now, 0)  # warm the template cache, as ours is warmed
    start = time.perf_counter()
    wires = [naive_one(renderer, lead, now, row) for row, lead in enumerate(leads, 1)]
    return time.perf_counter() - start, wires


def run_dkim(wires: list[bytes], key: rsa.RSAPrivateKey) -> tuple[float, list[bytes]]:
    signer = DKIMSigner(domain=DKIM_DOMAIN, selector=DKIM_SELECTOR, private_key=key)
    sign_message(wires[0], [signer])  # the header shape's template is made once
    start = time.perf_counter()
    signed = [sign_message(wire, [signer]) for wire in wires]
    return time.perf_counter() - start, signed


def run_dkimpy(wires: list[bytes], key: rsa.RSAPrivateKey) -> float:
    """dkimpy's signer on the same messages, same key, relaxed/relaxed, its default headers."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    selector, domain = DKIM_SELECTOR.encode(), DKIM_DOMAIN.encode()
    start = time.perf_counter()
    for wire in wires:
        dkimpy.sign(wire, selector, domain, pem, canonicalize=(b"relaxed", b"relaxed"))
    return time.perf_counter() - start


def check_dkim(signed: list[bytes], key: rsa.RSAPrivateKey) -> list[str]:
    """dkimpy verifies each signature, the key record answered from memory, not DNS."""
    record = public_key_record(key).encode()
    query = f"{DKIM_SELECTOR}._domainkey.{DKIM_DOMAIN}.".encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == query else None

    problems = []
    for wire in signed:
        if not dkimpy.verify(wire, dnsfunc=dnsfunc):
            problems.append(f"DKIM signature does not verify: {wire.split(b'Message-ID: ')[1][:60]!r}")
    return problems


def check(wires: list[bytes], leads: list[Lead]) -> list[str]:
    """Every message parses and is personalized; returns the problems found."""
    problems = []
    for wire, lead in zip(wires, leads):
        message = email.message_from_bytes(wire, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        text_part, html_part = message.get_body(("plain",)), message.get_body(("html",))
        if text_part is None or html_part is None:
            problems.append(f"{lead.email}: missing a part")
            continue
        text, html = text_part.get_content(), html_part.get_content()
        to = message["To"].addresses[0]
        if to.addr_spec.lower() != lead.email.encode("idna").decode() and to.addr_spec != lead.email:
            problems.append(f"{lead.email}: To is {to.addr_spec}")
        if to.display_name != lead.display_name:
            problems.append(f"{lead.email}: display name {to.display_name!r}")
        if str(message["Subject"]) != f"{lead.first_name}, your week at {lead.company} — 今週のまとめ":
            problems.append(f"{lead.email}: subject {message['Subject']!r}")
        token = str(lead.attributes["id_token"])
        for value in (lead.first_name, token):
            if value not in text or value not in html:
                problems.append(f"{lead.email}: {value!r} missing from a part")
        if "&lt;Ltd&gt;" not in html or "<Ltd>" not in text:
            problems.append(f"{lead.email}: company not escaped in HTML or not plain in text")
        if 'style="' not in html or "<style>" in html.replace("<style>@media", ""):
            problems.append(f"{lead.email}: CSS not inlined")
    return problems


def html_part(wire: bytes) -> bytes:
    message = email.message_from_bytes(wire, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content()).encode("utf-8")


def same_document(ours: bytes, naive: bytes) -> bool:
    """Whether two messages' HTML parts are the same document (tags, attributes, text)."""

    def tree(wire: bytes) -> list[tuple[str, tuple[tuple[str, str], ...], str]]:
        message = email.message_from_bytes(wire, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        part = message.get_body(("html",))
        assert part is not None
        root = lxml_html.document_fromstring(part.get_content())
        return [
            (str(el.tag), tuple(sorted((k, " ".join(v.split())) for k, v in el.attrib.items())), " ".join((el.text or "").split()))
            for el in root.iter()
            if isinstance(el.tag, str)
        ]

    return tree(ours) == tree(naive)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a CI-sized run")
    parser.add_argument("-n", type=int, default=None, help="messages to render with our pipeline")
    args = parser.parse_args()
    count = args.n or (1_000 if args.quick else 10_000)
    naive_count = max(50, count // 50)
    dkimpy_count = min(count, 50 if args.quick else 200)  # ~7 ms each
    verify_count = min(count, 100 if args.quick else 200)
    rng = random.Random(7)
    leads = make_leads(count, rng)
    now = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    templates = workspace_templates()
    renderer = Renderer(templates)
    composer = Composer(renderer, {"default": IDENTITY}, links=LINKS)

    ours_seconds, wires = run_ours(composer, leads, now)
    naive_seconds, naive_wires = run_naive(Renderer(templates), leads[:naive_count], now)
    rate = count / ours_seconds
    naive_rate = naive_count / naive_seconds
    ratio = rate / naive_rate
    size = sum(len(w) for w in wires) / len(wires)
    html_size = sum(len(html_part(w)) for w in wires[:100]) / min(100, len(wires))

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sign_seconds, signed = run_dkim(wires, key)
    dkimpy_seconds = run_dkimpy(wires[:dkimpy_count], key)
    sign_us = 1e6 * sign_seconds / count
    dkimpy_us = 1e6 * dkimpy_seconds / dkimpy_count
    signed_rate = count / (ours_seconds + sign_seconds)

    problems = check(wires, leads)
    problems += check_dkim(signed[:: max(1, count // verify_count)][:verify_count], key)
    mismatched = [lead.email for lead, o, n in zip(leads, wires, naive_wires) if not same_document(o, n)]
    if mismatched:
        problems.append(f"{len(mismatched)} of {naive_count} HTML parts differ from per-message inlining, e.g. {mismatched[0]}")

    print(f"ours:  {count:>6} messages in {ours_seconds:6.2f} s = {rate:8.0f} msg/s ({1e6 / rate:6.0f} µs/msg, {size / 1024:.1f} KiB each, HTML {html_size / 1024:.1f} KiB)")
    print(f"naive: {naive_count:>6} messages in {naive_seconds:6.2f} s = {naive_rate:8.0f} msg/s ({1e6 / naive_rate:6.0f} µs/msg)")
    print(f"ratio: {ratio:.1f}x (target ≥ {TARGET_RATIO:g}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'}); "
          f"rate target ≥ {TARGET_RATE:g} msg/s: {'met' if rate >= TARGET_RATE else 'NOT met'}")
    print(f"dkim:  rsa-sha256 2048 bits {sign_us:6.0f} µs/msg, dkimpy {dkimpy_us:6.0f} µs/msg ({dkimpy_count} msgs): "
          f"{dkimpy_us / sign_us:.1f}x; render + sign {signed_rate:8.0f} msg/s ({1e6 / signed_rate:6.0f} µs/msg)")
    print(f"checks: {count} messages parsed and personalized, {naive_count} compared with per-message inlining, "
          f"{verify_count} DKIM signatures verified by dkimpy: "
          + ("ok" if not problems else f"{len(problems)} FAILED"))
    for problem in problems[:10]:
        print(f"  {problem}")
    print(json.dumps({
        "benchmark": "render",
        "n": count,
        "naive_n": naive_count,
        "msgs_per_s": round(rate, 1),
        "naive_msgs_per_s": round(naive_rate, 1),
        "ratio": round(ratio, 2),
        "us_per_msg": round(1e6 / rate, 1),
        "bytes_per_msg": round(size),
        "html_bytes_per_msg": round(html_size),
        "dkim_us_per_msg": round(sign_us, 1),
        "dkimpy_n": dkimpy_count,
        "dkimpy_us_per_msg": round(dkimpy_us, 1),
        "dkim_ratio": round(dkimpy_us / sign_us, 2),
        "msgs_per_s_signed": round(signed_rate, 1),
        "us_per_msg_signed": round(1e6 / signed_rate, 1),
        "dkim_verified": verify_count,
        "checks_failed": len(problems),
    }))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
