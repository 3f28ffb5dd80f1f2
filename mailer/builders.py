"""Building a claimed message: render, assemble and DKIM-sign it, from a `BuildJob` to bytes.

The same `MessageBuilder` runs in the daemon's own process (`LocalBuilders`) or in build
processes beside it (`mailer.buildprocesses`): building is the CPU-heavy part of a send
(templates, MIME, an RSA signature), and a Python process uses one core. Everything a job
carries is plain data, so a job means the same wherever it is built.

Outcomes: `Built` bytes; `BuildFailed` when this message can never be built (a header that
would be injected, an address that is no addr-spec): the message fails; `TemplateBroken` when
the step's template does not render for this lead (an undefined variable, a sandbox refusal):
the message is kept and tried again with the retry backoff, so fixing the template (or the
lead) sends it; `BuildUnavailable` when it cannot be built now (its scenario is not loaded, a
build process died): it is retried soon.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mailer.compose import Composed, Composer
from mailer.config import Config
from mailer.dkim import DKIMSigner, load_private_key, parse_private_key, sign_message
from mailer.errors import HeaderInjectionError, MailerError, TemplateError
from mailer.leads import Lead
from mailer.links import Links
from mailer.optin import OptInMailer
from mailer.render import Renderer
from mailer.scenario import Scenario
from mailer.tokens import Signer


@dataclass(frozen=True)
class BuildJob:
    """One message to build: `step_id` is the list for an opt-in confirmation."""

    message_row: int  # messages.id, which the message's signed links name
    message_id: str
    scenario: str
    step_id: str
    lead: Lead
    now: datetime
    confirmation: bool = False

    def portable(self) -> BuildJob:
        """The job with plain containers only, so it pickles (a lead's empty attributes are a
        read-only mapping proxy)."""
        if type(self.lead.attributes) is dict:  # as read from the store: nothing to copy
            return self
        return dataclasses.replace(self, lead=dataclasses.replace(self.lead, attributes=dict(self.lead.attributes)))


@dataclass(frozen=True)
class Built:
    wire: bytes  # signed when [dkim] is configured
    subject: str
    smtputf8: bool


@dataclass(frozen=True)
class BuildKeys:
    """The secrets that sign links and the DKIM keys, read from their files once, by the daemon.

    Every builder signs with these, a build process started again an hour later too, so links
    always verify with the keys the daemon's tracking endpoints hold, even when the files were
    rotated on disk meanwhile (the daemon reads them again when it restarts)."""

    secrets: tuple[bytes, ...]
    dkim_pems: tuple[tuple[Path, bytes], ...]  # (file, PEM): the RSA key, then the Ed25519 one

    @classmethod
    def load(cls, config: Config) -> BuildKeys:
        """Raises ConfigError or DKIMKeyError naming the file that cannot be used."""
        files = [Path(f) for f in (config.dkim.private_key_file, config.dkim.ed25519_key_file) if f]
        for file in files:
            load_private_key(file)  # a key that cannot sign is refused here, naming its file
        return cls(tuple(config.secret_keys()), tuple((file, file.read_bytes()) for file in files))


class BuildFailed(MailerError):
    """This message cannot be built, ever: it fails (the error says why)."""


class TemplateBroken(MailerError):
    """The step's template does not render for this lead: kept, tried again until it expires."""


class BuildUnavailable(Exception):
    """The message cannot be built just now: it is tried again later."""


class MessageBuilder:
    """Composes and signs messages from the workspace's templates, links key and DKIM keys."""

    def __init__(self, config: Config, keys: BuildKeys | None = None) -> None:
        self.config = config
        keys = keys or BuildKeys.load(config)
        links = Links(Signer(keys.secrets), config.tracking.public_base)
        renderer = Renderer(config.templates)
        self.composer = Composer(renderer, config.identities, links=links, config=config)
        self.optin = OptInMailer(config=config, links=links, renderer=renderer)
        self.dkim_keys = [parse_private_key(pem, file) for file, pem in keys.dkim_pems]
        self._signers: dict[str, list[DKIMSigner]] = {}
        self.scenarios: dict[str, Scenario] = {}

    def load(self, scenarios: dict[str, Scenario]) -> None:
        """Build from these scenarios from now on (after a reload); cached layouts are dropped."""
        self.scenarios = scenarios
        self.composer.forget()

    def build(self, job: BuildJob) -> Built:
        """The message's bytes; raises BuildFailed, TemplateBroken or BuildUnavailable."""
        try:
            if job.confirmation:
                composed = self.optin.compose(job.lead, job.step_id, message_id=job.message_id, now=job.now)
                sender = self.config.list_config(job.step_id).sender
            else:
                scenario = self.scenarios.get(job.scenario)
                step = scenario.step(job.step_id) if scenario is not None else None
                if scenario is None or step is None:
                    raise BuildUnavailable(f"scenario {job.scenario!r} is not loaded")
                composed = self.composer.compose(
                    scenario, step, job.lead, message_id=job.message_id, now=job.now, message_row=job.message_row
                )
                sender = scenario.sender
            wire = self._sign(composed, sender)
        except TemplateError as error:  # the author's to fix: the message waits for it
            raise TemplateBroken(str(error)) from None
        except (HeaderInjectionError, MailerError, ValueError) as error:
            raise BuildFailed(str(error)) from None
        return Built(wire=wire, subject=composed.parts.subject, smtputf8=composed.smtputf8)

    def _sign(self, composed: Composed, sender: str) -> bytes:
        """The message with its DKIM signatures, d= aligned with the From domain unless set."""
        if not self.dkim_keys:
            return composed.wire
        domain = self.config.dkim.domain or self.config.identities[sender].from_address.rpartition("@")[2]
        signers = self._signers.get(domain)
        if signers is None:
            dkim = self.config.dkim
            signers = [
                DKIMSigner(domain=domain, selector=dkim.selector_for("ed25519" if isinstance(key, Ed25519PrivateKey) else "rsa"), private_key=key)
                for key in self.dkim_keys
            ]  # fmt: skip
            self._signers[domain] = signers
        return sign_message(composed.wire, signers)


class Builders(Protocol):
    """Where the daemon's workers have messages built."""

    async def start(self) -> None: ...

    def load(self, scenarios: dict[str, Scenario]) -> None: ...

    async def build(self, job: BuildJob) -> Built: ...

    async def close(self) -> None: ...


class LocalBuilders:
    """Builds in the daemon's own process, on the event loop (a message takes about a
    millisecond: fine for a few hundred a second, and for one core)."""

    def __init__(self, config: Config, keys: BuildKeys | None = None) -> None:
        self.builder = MessageBuilder(config, keys)

    async def start(self) -> None:
        return None

    def load(self, scenarios: dict[str, Scenario]) -> None:
        self.builder.load(scenarios)

    async def build(self, job: BuildJob) -> Built:
        return self.builder.build(job)

    async def close(self) -> None:
        return None
