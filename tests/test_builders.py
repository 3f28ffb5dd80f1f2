"""Tests for mailer.builders: a `BuildJob` to signed bytes, in the daemon's own process.

The workspace is the shipped example (`mailer init`) with a DKIM key added; every signature
is checked by dkimpy, and every message is compared with what the daemon composed and signed
before building moved into `MessageBuilder` (Composer + OptInMailer + `sign_message`).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from email import message_from_bytes, policy
from pathlib import Path

import dkim
import pytest

from mailer.builders import BuildFailed, BuildJob, Built, BuildUnavailable, LocalBuilders, MessageBuilder, TemplateBroken
from mailer.cli import main
from mailer.compose import Composer
from mailer.config import Config, load_config
from mailer.dkim import DKIMSigner, generate_rsa_key, load_private_key, public_key_record, sign_message
from mailer.leads import Lead
from mailer.links import Links
from mailer.optin import OptInMailer
from mailer.render import Renderer
from mailer.scenario import Scenario, load_scenarios
from mailer.tokens import Signer

NOW = datetime(2026, 1, 5, 9, 30, tzinfo=timezone.utc)
SELECTOR = "s2026"
# The workspace's extra identity and double opt-in list, appended to what `mailer init` writes.
EXTRA_CONFIG = """
[identities.news]
from = "Northwind News <news@northwind.example>"

[lists.newsletter]
title = "Northwind News"
double_opt_in = true
sender = "news"
"""


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One RSA-2048 key for the module: generating one takes a noticeable fraction of a second."""
    path = tmp_path_factory.mktemp("keys") / "dkim.pem"
    generate_rsa_key(path)
    return path


def example_workspace(root: Path, dkim_key: Path | None) -> Config:
    """`mailer init` in `root`, with `dkim_key` as [dkim] private_key_file when given."""
    assert main(["init", str(root)]) == 0
    config_file = root / "mailer.toml"
    text = config_file.read_text(encoding="utf-8")
    if dkim_key is not None:
        shutil.copyfile(dkim_key, root / "dkim.pem")
        signed = text.replace('selector = "mailer"', f'selector = "{SELECTOR}"', 1)
        signed = signed.replace('private_key_file = ""', 'private_key_file = "dkim.pem"', 1)
        assert signed.count(SELECTOR) == 1 and 'private_key_file = "dkim.pem"' in signed, "the starter's [dkim] changed"
        text = signed
    config_file.write_text(text + EXTRA_CONFIG, encoding="utf-8")
    return load_config(config_file)


def scenarios_of(config: Config) -> dict[str, Scenario]:
    scenarios, errors = load_scenarios(config.scenarios, identities=config.identities, templates_dir=config.templates)
    assert errors == []
    return {scenario.name: scenario for scenario in scenarios}


def dns_for(key_file: Path, *domains: str) -> Callable[..., bytes | None]:
    """A dkimpy dnsfunc answering our public key at SELECTOR under each domain, never the network."""
    record = public_key_record(load_private_key(key_file)).encode()
    names = {f"{SELECTOR}._domainkey.{domain}.".encode() for domain in domains}

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name in names else None

    return dnsfunc


def boundary_free(wire: bytes) -> bytes:
    """`wire` with its MIME boundary written as BOUNDARY: each MessageLayout draws a random
    one (mailer.mime), so two builders never agree on it."""
    found = re.search(rb'boundary="([^"]+)"', wire)
    assert found is not None, wire[:300]
    return wire.replace(found.group(1), b"BOUNDARY")


def unsigned(wire: bytes) -> tuple[bytes, int]:
    """The message under its one DKIM-Signature field, and that field's t=."""
    field = re.match(rb"DKIM-Signature:.*?\r\n(?![ \t])", wire, re.S)
    assert field is not None, wire[:300]
    timestamp = re.search(rb"\bt=(\d+);", field.group(0))
    assert timestamp is not None
    return wire[field.end() :], int(timestamp.group(1))


def lead(number: int, **attributes: object) -> Lead:
    return Lead(
        email=f"lead{number}@example.com", first_name=f"Alice{number}", last_name="Nguyen",
        company=f"Company {number}", id=number, attributes=attributes,
    )  # fmt: skip


def job(number: int, scenario: str = "trial-nurture", step: str = "welcome", *, who: Lead | None = None, confirmation: bool = False) -> BuildJob:
    return BuildJob(number, f"<m{number}@northwind.example>", scenario, step, who or lead(number), NOW, confirmation)


def test_the_example_steps_are_the_old_composition_signed_and_verify(tmp_path: Path, dkim_key: Path) -> None:
    """Every step of the shipped trial nurture, English and Japanese, is what Composer and
    sign_message made before, and dkimpy verifies it with our published key."""
    config = example_workspace(tmp_path, dkim_key)
    scenarios = scenarios_of(config)
    builder = MessageBuilder(config)
    builder.load(scenarios)
    # the daemon's wiring before builders existed
    links = Links(Signer(config.secret_keys()), config.tracking.public_base)
    old = Composer(Renderer(config.templates), config.identities, links=links, config=config)
    signers = [DKIMSigner(domain="acme.example", selector=SELECTOR, private_key=load_private_key(dkim_key))]
    dnsfunc = dns_for(dkim_key, "acme.example")
    japanese = Lead(email="taro@example.jp", first_name="太郎", last_name="山田", company="山田商事", id=7, attributes={"language": "ja"})
    nurture = scenarios["trial-nurture"]
    subjects = []
    for number, step in enumerate(nurture.steps):
        for who in (lead(number), japanese):
            built = builder.build(job(number, step=step.id, who=who))
            message, timestamp = unsigned(built.wire)
            assert sign_message(message, signers, timestamp=timestamp) == built.wire
            composed = old.compose(nurture, step, who, message_id=f"<m{number}@northwind.example>", now=NOW, message_row=number)
            assert boundary_free(message) == boundary_free(composed.wire)
            assert (built.subject, built.smtputf8) == (composed.parts.subject, composed.smtputf8)
            assert dkim.verify(built.wire, dnsfunc=dnsfunc), f"{step.id} for {who.email}"
            subjects.append(built.subject)
    assert subjects[0] == "Welcome to Northwind, Alice0"
    assert subjects[1] == "【Northwind】山田様、トライアルへようこそ"
    assert not dkim.verify(built.wire.replace(b"</html>", b"</html>!"), dnsfunc=dnsfunc), "the verifier can say no"


def test_a_confirmation_for_an_opt_in_list_is_built_from_the_lists_sender_and_signed_for_its_domain(tmp_path: Path, dkim_key: Path) -> None:
    """A confirmation job (step id = list) is the OptInMailer's message, From the list's
    sender, signed with d= that sender's domain."""
    config = example_workspace(tmp_path, dkim_key)
    builder = MessageBuilder(config)  # no scenarios loaded: a confirmation needs none
    who = lead(3)
    built = builder.build(job(3, "@optin", "newsletter", who=who, confirmation=True))
    assert built.subject == "Please confirm your subscription to Northwind News"
    message, timestamp = unsigned(built.wire)
    links = Links(Signer(config.secret_keys()), config.tracking.public_base)
    composed = OptInMailer(config=config, links=links, renderer=Renderer(config.templates)).compose(
        who, "newsletter", message_id="<m3@northwind.example>", now=NOW
    )
    assert boundary_free(message) == boundary_free(composed.wire)
    signers = [DKIMSigner(domain="northwind.example", selector=SELECTOR, private_key=load_private_key(dkim_key))]
    assert sign_message(message, signers, timestamp=timestamp) == built.wire
    assert dkim.verify(built.wire, dnsfunc=dns_for(dkim_key, "northwind.example"))
    parsed = message_from_bytes(built.wire, policy=policy.default)
    assert parsed["From"].addresses[0].addr_spec == "news@northwind.example"
    assert "List-Unsubscribe" not in parsed, "nobody has subscribed yet: nothing to unsubscribe from"


def test_without_dkim_the_message_is_the_composition_unsigned(tmp_path: Path) -> None:
    """With no [dkim] key the bytes are the composition's, with no DKIM-Signature."""
    config = example_workspace(tmp_path, None)
    builder = MessageBuilder(config)
    builder.load(scenarios_of(config))
    built = builder.build(job(1))
    assert built.wire.startswith(b"To: ") and b"DKIM-Signature" not in built.wire
    assert built.subject == "Welcome to Northwind, Alice1"


def test_a_scenario_or_step_not_loaded_is_unavailable_not_failed(tmp_path: Path) -> None:
    """A job for a scenario or step the builder does not have is BuildUnavailable (retried later), never BuildFailed."""
    config = example_workspace(tmp_path, None)
    builder = MessageBuilder(config)
    with pytest.raises(BuildUnavailable, match="trial-nurture"):
        builder.build(job(1))  # nothing loaded yet
    builder.load(scenarios_of(config))
    with pytest.raises(BuildUnavailable, match="gone-away"):
        builder.build(job(1, scenario="gone-away"))
    with pytest.raises(BuildUnavailable):
        builder.build(job(1, step="a-step-since-removed"))
    assert not issubclass(BuildUnavailable, BuildFailed) and not issubclass(BuildFailed, BuildUnavailable)


PLAN_STEP = """
name: plans
sender: default
entry:
  list: trial-signups
steps:
  - id: upgrade
    wait: 0m
    subject: "Your {{ lead.plan }} plan"
    template: plan.html
"""
PLAN_TEMPLATE = '{% extends "layout.html" %}{% block content %}<p>Hello {{ lead.first_name }},</p>\n<p>your plan: {{ lead.plan | upper }}</p>{% endblock %}\n'


def test_a_template_that_fails_for_one_lead_is_template_broken_naming_the_template(tmp_path: Path) -> None:
    """An undefined variable for this lead is TemplateBroken (kept, not failed); the next lead still builds."""
    config = example_workspace(tmp_path, None)
    (config.templates / "plan.html").write_text(PLAN_TEMPLATE, encoding="utf-8")
    (config.scenarios / "plans.yaml").write_text(PLAN_STEP, encoding="utf-8")
    builder = MessageBuilder(config)
    builder.load(scenarios_of(config))
    with pytest.raises(TemplateBroken, match="no attribute 'plan'"):
        builder.build(job(1, "plans", "upgrade"))
    built = builder.build(job(2, "plans", "upgrade", who=lead(2, plan="pro")))
    assert built.subject == "Your pro plan" and b"PRO" in built.wire


def test_a_template_error_names_the_template_file(tmp_path: Path) -> None:
    """The error of a template that fails for a lead names that template's file, so the operator can fix it."""
    config = example_workspace(tmp_path, None)
    (config.templates / "plan.html").write_text(PLAN_TEMPLATE, encoding="utf-8")
    (config.scenarios / "plans.yaml").write_text(PLAN_STEP.replace("{{ lead.plan }}", "new"), encoding="utf-8")
    builder = MessageBuilder(config)
    builder.load(scenarios_of(config))
    with pytest.raises(TemplateBroken) as caught:
        builder.build(job(1, "plans", "upgrade"))
    assert "plan.html" in str(caught.value), str(caught.value)


def test_hostile_lead_values_fail_only_their_message(tmp_path: Path) -> None:
    """A name carrying CRLF (header injection) or an address that is no addr-spec is BuildFailed saying why."""
    config = example_workspace(tmp_path, None)
    builder = MessageBuilder(config)
    builder.load(scenarios_of(config))
    injected = Lead(email="eve@example.com", first_name="Eve\r\nBcc: victim@example.net", last_name="X", id=5)
    with pytest.raises(BuildFailed, match=r"To: .*CR, LF or NUL"):
        builder.build(job(5, who=injected))
    with pytest.raises(BuildFailed, match="not an addr-spec"):
        builder.build(job(6, who=Lead(email="two words@example.com", id=6)))
    with pytest.raises(BuildFailed, match="stored lead"):  # a confirmation link names the lead's row
        builder.build(job(7, "@optin", "newsletter", who=Lead(email="new@example.com"), confirmation=True))
    assert isinstance(builder.build(job(8)), Built)


def test_a_reload_drops_layouts_cached_for_the_old_scenarios(tmp_path: Path) -> None:
    """After `load` with a scenario whose sender changed, the next message is From the new sender."""
    config = example_workspace(tmp_path, None)
    scenarios = scenarios_of(config)
    builder = MessageBuilder(config)
    builder.load(scenarios)
    assert b"From: Acme Marketing <news@acme.example>" in builder.build(job(1)).wire
    nurture = scenarios["trial-nurture"]
    builder.load({**scenarios, nurture.name: dataclasses.replace(nurture, sender="news")})
    assert b"From: Northwind News <news@northwind.example>" in builder.build(job(2)).wire


async def test_local_builders_build_in_this_process(tmp_path: Path) -> None:
    """LocalBuilders is the MessageBuilder behind the Builders protocol: same bytes, same errors."""
    config = example_workspace(tmp_path, None)
    local = LocalBuilders(config)
    await local.start()
    with pytest.raises(BuildUnavailable):
        await local.build(job(1))
    local.load(scenarios_of(config))
    built = await local.build(job(1))
    assert built == local.builder.build(job(1))
    await local.close()


def test_an_ed25519_key_signs_under_its_own_selector_beside_the_rsa_one(tmp_path: Path, dkim_key: Path) -> None:
    """With both keys, each signature names its own selector (one key record each), and both verify."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    config = example_workspace(tmp_path, dkim_key)
    ed_file = tmp_path / "ed25519.pem"
    ed_file.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    config = dataclasses.replace(config, dkim=dataclasses.replace(config.dkim, ed25519_key_file=str(ed_file)))
    builder = MessageBuilder(config)
    builder.load(scenarios_of(config))
    wire = builder.build(job(1)).wire
    selectors = re.findall(rb"DKIM-Signature:.*?\bs=([^;]+);", wire, re.S)
    assert [s.decode() for s in selectors] == [SELECTOR, f"{SELECTOR}-ed25519"]
    records = {
        f"{SELECTOR}._domainkey.acme.example.".encode(): public_key_record(load_private_key(dkim_key)).encode(),
        f"{SELECTOR}-ed25519._domainkey.acme.example.".encode(): public_key_record(load_private_key(ed_file)).encode(),
    }

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    assert all(dkim.DKIM(wire).verify(idx=index, dnsfunc=dnsfunc) for index in range(2))
