"""Tests for mailer.dkim: every signature is checked by dkimpy, an independent verifier."""

from __future__ import annotations

import base64
import hashlib
import re
import stat
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer import dkim as ours
from mailer.dkim import (
    SIGNED_HEADERS,
    DKIMKeyError,
    DKIMSigner,
    PrivateKey,
    generate_rsa_key,
    load_private_key,
    public_key_record,
    sign_message,
)
from mailer.errors import UserError
from mailer.mime import Mailbox, MessageLayout

DOMAIN = "acme.example"
TO = Mailbox("taro@example.jp", "山田 太郎")
SENDER = Mailbox("news@acme.example", "株式会社アクメ マーケティング部")
REPLY_TO = Mailbox("sales@acme.example", "Acme Sales")
DATE = datetime(2024, 5, 1, 9, 30, 15, tzinfo=timezone(timedelta(hours=9)))
JA_SUBJECT = "【ご案内】ウェビナーのお知らせ — 第3回 マーケティング自動化の実践セミナー（オンライン開催）"
UNSUBSCRIBE = (
    ("List-Unsubscribe", "<mailto:unsubscribe+t0k3n@bounces.acme.example>, "
     "<https://t.acme.example/u/" + "x" * 120 + ">"),
    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
)  # fmt: skip


# Made once: the property tests cannot take function-scoped fixtures.
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED25519_KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def rsa2048() -> rsa.RSAPrivateKey:
    return RSA_KEY


@pytest.fixture(scope="module")
def rsa1024() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


@pytest.fixture(scope="module")
def ed25519() -> Ed25519PrivateKey:
    return ED25519_KEY


def dns_for(*signers_and_keys: tuple[DKIMSigner, PrivateKey]) -> Callable[..., bytes | None]:
    """A dkimpy dnsfunc answering each signer's TXT record from memory, never the network."""
    records = {
        f"{signer.selector}._domainkey.{signer.domain}.".encode(): public_key_record(key).encode()
        for signer, key in signers_and_keys
    }

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return dnsfunc


def verifies(message: bytes, dnsfunc: Callable[..., bytes | None], index: int = 0) -> bool:
    """Whether dkimpy verifies the index-th signature of `message` as it arrives over SMTP,
    where the client has ended a body that lacked one with CRLF (RFC 5321 4.1.1.4)."""
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    try:
        return bool(dkim.DKIM(message).verify(idx=index, dnsfunc=dnsfunc))
    except dkim.DKIMException:  # dkimpy raises on some failures (a body hash mismatch)
        return False


def assemble(
    *,
    subject: str = JA_SUBJECT,
    to: Mailbox = TO,
    sender: Mailbox = SENDER,
    reply_to: Mailbox | None = REPLY_TO,
    text: str = "Hi Taro,\n\nThanks for signing up.\n",
    html: str = "<p>Hi Taro,</p>\n",
    headers: tuple[tuple[str, str], ...] = UNSUBSCRIBE,
) -> bytes:
    layout = MessageLayout(sender=sender, reply_to=reply_to, headers=headers)
    return layout.assemble(
        to=to, subject=subject, message_id="<1.2@acme.example>", date=DATE, text=text, html=html
    )


def tags(signed: bytes, index: int = 0) -> dict[str, str]:
    """The tags of the index-th DKIM-Signature field, white space removed."""
    fields = re.findall(rb"DKIM-Signature:(.*?\r\n)(?![ \t])", signed, re.DOTALL)
    value = re.sub(rb"\s+", b"", fields[index]).decode()
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


@pytest.mark.parametrize("key_name", ["rsa2048", "rsa1024", "ed25519"])
def test_a_japanese_message_verifies_with_dkimpy(
    key_name: str, request: pytest.FixtureRequest
) -> None:
    """An assembled message with Japanese subject and names verifies for each kind of key."""
    key = request.getfixturevalue(key_name)
    signer = DKIMSigner(domain=DOMAIN, selector="s1", private_key=key)
    signed = sign_message(assemble(), [signer])
    assert verifies(signed, dns_for((signer, key)))
    expected = "rsa-sha256" if key_name.startswith("rsa") else "ed25519-sha256"
    assert signer.algorithm == tags(signed)["a"] == expected


def test_both_signatures_verify_on_one_message(
    rsa2048: rsa.RSAPrivateKey, ed25519: Ed25519PrivateKey
) -> None:
    """An RSA and an Ed25519 signature on the same message both verify, in signer order."""
    signers = [
        DKIMSigner(domain=DOMAIN, selector="rsa", private_key=rsa2048),
        DKIMSigner(domain=DOMAIN, selector="ed", private_key=ed25519),
    ]
    message = assemble()
    signed = sign_message(message, signers)
    dnsfunc = dns_for((signers[0], rsa2048), (signers[1], ed25519))
    assert signed.endswith(message)
    assert [tags(signed, 0)["a"], tags(signed, 1)["a"]] == ["rsa-sha256", "ed25519-sha256"]
    assert verifies(signed, dnsfunc, 0) and verifies(signed, dnsfunc, 1)


def test_sign_returns_the_field_sign_message_prepends(rsa2048: rsa.RSAPrivateKey) -> None:
    """`sign` gives the same field as `sign_message` puts first, for the same timestamp."""
    signer = DKIMSigner(domain=DOMAIN, selector="s1", private_key=rsa2048)
    message = assemble()
    field = signer.sign(message, timestamp=1_700_000_000)
    assert field.startswith(b"DKIM-Signature: ") and field.endswith(b"\r\n")
    assert sign_message(message, [signer], timestamp=1_700_000_000) == field + message
    assert verifies(field + message, dns_for((signer, rsa2048)))


@pytest.mark.parametrize(
    ("text", "html"),
    [
        ("", ""),
        ("line\n\n\n\n", "<p>x</p>\n\n\n"),
        ("   \n\t\n \t \n", "  \t\n\n"),
        ("a" * 5000 + "\n" + "日本語の本文です。\n" * 4000, "<p>" + "x " * 30000 + "</p>"),
    ],
    ids=["empty", "trailing-blank-lines", "whitespace-only-lines", "100KB"],
)
def test_bodies_of_every_shape_verify(
    text: str, html: str, rsa2048: rsa.RSAPrivateKey, ed25519: Ed25519PrivateKey
) -> None:
    """Empty, blank-tailed, white-space-only and 100 KB bodies verify with both algorithms."""
    signers = [
        DKIMSigner(domain=DOMAIN, selector="rsa", private_key=rsa2048),
        DKIMSigner(domain=DOMAIN, selector="ed", private_key=ed25519),
    ]
    message = assemble(text=text, html=html)
    if text.startswith("a" * 10):
        assert len(message) > 100_000
    signed = sign_message(message, signers)
    dnsfunc = dns_for((signers[0], rsa2048), (signers[1], ed25519))
    assert verifies(signed, dnsfunc, 0) and verifies(signed, dnsfunc, 1)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\r\n",
        b"\r\n\r\n\r\n",
        b"no line break at the end",
        b"trailing white space \t \r\n\t\r\n  \r\n\r\n",
        b"a  b\t\tc \t d\r\n \tindented\r\n\r\nlast   ",
    ],
)
def test_raw_bodies_are_canonicalized_as_dkimpy_does(
    body: bytes, rsa2048: rsa.RSAPrivateKey
) -> None:
    """Bodies MessageLayout never writes (raw WSP runs, no final CRLF, none at all) verify."""
    signer = DKIMSigner(domain=DOMAIN, selector="s1", private_key=rsa2048)
    message = b"From: a@acme.example\r\nSubject:  spaced \t out  \r\n\r\n" + body
    assert verifies(sign_message(message, [signer]), dns_for((signer, rsa2048)))


def test_a_message_without_a_body_verifies(rsa2048: rsa.RSAPrivateKey) -> None:
    """A header with no empty line and no body after it is signed with the empty body hash."""
    signer = DKIMSigner(domain=DOMAIN, selector="s1", private_key=rsa2048)
    message = b"From: a@acme.example\r\nTo: b@example.com\r\n"
    signed = sign_message(message, [signer])
    assert tags(signed)["bh"] == base64.b64encode(hashlib.sha256(b"").digest()).decode()
    assert verifies(signed, dns_for((signer, rsa2048)))


def test_rfc8463_example_signature_is_reproduced() -> None:
    """The canonicalization reproduces RFC 8463 appendix A's Ed25519 signature to the octet."""
    key = Ed25519PrivateKey.from_private_bytes(
        base64.b64decode("nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=")
    )
    assert public_key_record(key) == "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
    body = b"Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n"
    message = (
        b"From: Joe SixPack <joe@football.example.com>\r\n"
        b"To: Suzie Q <suzie@shopping.example.net>\r\n"
        b"Subject: Is dinner ready?\r\n"
        b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
        b"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
        b"\r\n" + body
    )
    unsigned_field = (
        b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
        b" d=football.example.com; i=@football.example.com;\r\n"
        b" q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
        b" subject : date : message-id : from : subject : date;\r\n"
        b" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
        b" b="
    )
    assert ours._body_hash(body) == b"2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="
    names = [b"from", b"to", b"subject", b"date", b"message-id"]
    fields = ours._Message(message, names).canonical
    data = b"".join(fields[name][0] for name in names) + ours._relaxed_field(unsigned_field)[:-2]
    signature = base64.b64encode(key.sign(hashlib.sha256(data).digest())).decode()
    assert signature == (
        "/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus"
        "Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw=="
    )


def test_a_changed_body_or_subject_fails(
    rsa2048: rsa.RSAPrivateKey, ed25519: Ed25519PrivateKey
) -> None:
    """Changing one body octet or the Subject breaks both signatures."""
    signers = [
        DKIMSigner(domain=DOMAIN, selector="rsa", private_key=rsa2048),
        DKIMSigner(domain=DOMAIN, selector="ed", private_key=ed25519),
    ]
    dnsfunc = dns_for((signers[0], rsa2048), (signers[1], ed25519))
    signed = sign_message(assemble(subject="Your invoice"), signers)
    assert verifies(signed, dnsfunc, 0) and verifies(signed, dnsfunc, 1)
    for tampered in (
        signed.replace(b"Thanks for signing up.", b"Thanks for signing up!"),
        signed.replace(b"Subject: Your invoice", b"Subject: Your invoicE"),
    ):
        assert tampered != signed
        assert not verifies(tampered, dnsfunc, 0) and not verifies(tampered, dnsfunc, 1)


def test_relaxed_changes_in_transit_still_verify(rsa2048: rsa.RSAPrivateKey) -> None:
    """Refolding a header, changing the case of its name and padding WSP keep it valid."""
    signer = DKIMSigner(domain=DOMAIN, selector="s1", private_key=rsa2048)
    signed = sign_message(assemble(subject="Your invoice for May"), [signer])
    rewritten = signed.replace(b"Subject: Your invoice for May", b"SUBJECT:Your\r\n\tinvoice  for May ")
    assert rewritten != signed
    assert verifies(rewritten, dns_for((signer, rsa2048)))


def test_a_second_from_breaks_the_signature(rsa2048: rsa.RSAPrivateKey) -> None:
    """From is oversigned: a From added above or below the signed one fails verification."""
    signer = DKIMSigner(domain=DOMAIN, selector="s1", private_key=rsa2048)
    dnsfunc = dns_for((signer, rsa2048))
    message = assemble()
    signed = sign_message(message, [signer])
    assert tags(signed)["h"].split(":").count("from") == 2
    forged_from = b"From: CEO <ceo@acme.example>\r\n"
    field = signed[: len(signed) - len(message)]
    assert not verifies(field + forged_from + message, dnsfunc)
    head, _, body = message.partition(b"\r\n\r\n")
    assert not verifies(field + head + b"\r\n" + forged_from + b"\r\n" + body, dnsfunc)


def test_only_present_headers_are_listed(rsa2048: rsa.RSAPrivateKey) -> None:
    """h= names the signed headers the message has and none it lacks (no Reply-To here)."""
    signer = DKIMSigner(domain=DOMAIN, selector="s1", private_key=rsa2048)
    signed = sign_message(assemble(reply_to=None, headers=()), [signer])
    assert tags(signed)["h"].split(":") == [
        "from", "from", "to", "subject", "date", "message-id", "mime-version", "content-type"
    ]  # fmt: skip
    signed = sign_message(assemble(), [signer])
    assert tags(signed)["h"].split(":") == [
        "from", "from", *SIGNED_HEADERS[1:]
    ]  # fmt: skip


def test_a_repeated_header_is_signed_bottom_up(rsa2048: rsa.RSAPrivateKey) -> None:
    """Two To fields are both listed and signed; changing either one fails (RFC 6376 5.4.2)."""
    signer = DKIMSigner(domain=DOMAIN, selector="s1", private_key=rsa2048)
    dnsfunc = dns_for((signer, rsa2048))
    message = b"To: first@example.com\r\nFrom: a@acme.example\r\nTo: second@example.com\r\n\r\nhi\r\n"
    signed = sign_message(message, [signer])
    assert tags(signed)["h"] == "from:from:to:to"
    assert verifies(signed, dnsfunc)
    assert not verifies(signed.replace(b"first@", b"other@"), dnsfunc)
    assert not verifies(signed.replace(b"second@", b"other@"), dnsfunc)
    swapped = signed.replace(b"first@", b"@@@").replace(b"second@", b"first@").replace(b"@@@", b"second@")
    assert not verifies(swapped, dnsfunc)


@pytest.mark.parametrize(
    ("domain", "a_label"),
    [("例え.jp", "xn--r8jz45g.jp"), ("d" * 63 + ".example", "d" * 63 + ".example")],
)
def test_signature_field_shape(domain: str, a_label: str, rsa2048: rsa.RSAPrivateKey) -> None:
    """The field has t=, no x= or l=, the A-label domain, and lines of at most 78 characters."""
    signer = DKIMSigner(domain=domain, selector="s" * 63, private_key=rsa2048)
    message = assemble()
    field = signer.sign(message, timestamp=1_714_523_415)
    assert verifies(field + message, dns_for((signer, rsa2048)))
    found = tags(field)
    assert found["d"] == a_label and found["t"] == "1714523415"
    assert not {"x", "l", "i"} & found.keys()
    lines = field.decode("ascii").split("\r\n")
    assert lines[-1] == "" and all(0 < len(line) <= 78 for line in lines[:-1])
    assert all(line.startswith(" ") for line in lines[1:-1])


def test_an_idn_domain_verifies(ed25519: Ed25519PrivateKey) -> None:
    """A signature for a Unicode domain is looked up and verified under its A-label."""
    signer = DKIMSigner(domain="Bücher.example", selector="Mail", private_key=ed25519)
    assert (signer.domain, signer.selector) == ("xn--bcher-kva.example", "mail")
    assert verifies(sign_message(assemble(), [signer]), dns_for((signer, ed25519)))


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"domain": "acme example"}, "domain"),
        ({"domain": ""}, "domain"),
        ({"selector": "s_1"}, "selector"),
        ({"headers": ("to", "subject")}, "From"),
        ({"headers": ("from", "to", "To")}, "repeats"),
    ],
)
def test_bad_signer_settings_are_refused(
    arguments: dict[str, object], problem: str, ed25519: Ed25519PrivateKey
) -> None:
    """A domain or selector that is no domain name, or a header list without From, is refused."""
    settings_: dict[str, object] = {"domain": DOMAIN, "selector": "s1", "private_key": ed25519}
    with pytest.raises(ValueError, match=problem):
        DKIMSigner(**{**settings_, **arguments})  # type: ignore[arg-type]


def test_a_message_without_from_is_refused(ed25519: Ed25519PrivateKey) -> None:
    """RFC 6376 5.4 requires a signed From, so a message lacking one is a programming error."""
    signer = DKIMSigner(domain=DOMAIN, selector="s1", private_key=ed25519)
    with pytest.raises(ValueError, match="From"):
        signer.sign(b"To: b@example.com\r\n\r\nhi\r\n")


def test_generated_key_is_private_loadable_and_never_overwritten(tmp_path: Path) -> None:
    """generate_rsa_key writes a 0600 PEM that loads, signs and verifies, and refuses to overwrite."""
    path = tmp_path / "dkim.pem"
    generate_rsa_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_private_key(path)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    signer = DKIMSigner(domain=DOMAIN, selector="s1", private_key=key)
    assert verifies(sign_message(assemble(), [signer]), dns_for((signer, key)))
    before = path.read_bytes()
    with pytest.raises(DKIMKeyError, match="already there"):
        generate_rsa_key(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["dkim.pem"]


@pytest.mark.parametrize("key_format", ["PKCS1", "PKCS8"])
def test_rsa_keys_load_from_pkcs1_and_pkcs8(
    key_format: str, tmp_path: Path, rsa1024: rsa.RSAPrivateKey
) -> None:
    """Both PEM layouts of an RSA key load ("BEGIN RSA PRIVATE KEY" and "BEGIN PRIVATE KEY")."""
    path = tmp_path / "key.pem"
    path.write_bytes(
        rsa1024.private_bytes(
            serialization.Encoding.PEM,
            getattr(serialization.PrivateFormat, "TraditionalOpenSSL" if key_format == "PKCS1" else key_format),
            serialization.NoEncryption(),
        )
    )
    key = load_private_key(path)
    assert public_key_record(key) == public_key_record(rsa1024)


def test_ed25519_key_loads(tmp_path: Path, ed25519: Ed25519PrivateKey) -> None:
    """An Ed25519 PKCS#8 PEM (what `openssl genpkey -algorithm ed25519` writes) loads."""
    path = tmp_path / "ed.pem"
    path.write_bytes(
        ed25519.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    assert public_key_record(load_private_key(path)) == public_key_record(ed25519)


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, password: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read the DKIM key"),
        (b"not a key\n", "not a PEM private key"),
        ("encrypted", "encrypted"),
        ("ec", "DKIM signs with RSA or Ed25519"),
    ],
)
def test_unusable_key_files_name_the_file_and_the_fix(
    content: bytes | str | None, problem: str, tmp_path: Path, rsa1024: rsa.RSAPrivateKey
) -> None:
    """A missing, garbled, encrypted or EC key file is a one-line user error naming the file."""
    path = tmp_path / "dkim.pem"
    if content == "encrypted":
        path.write_bytes(_pem(rsa1024, b"secret"))
    elif content == "ec":
        path.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(DKIMKeyError) as raised:
        load_private_key(path)
    message = str(raised.value)
    assert isinstance(raised.value, UserError)
    assert message.startswith(f"{path}: ") and problem in message and "openssl genpkey" in message
    assert "\n" not in message


_PRINTABLE = st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\r\n\0")
_BODY = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=600)


@settings(max_examples=150)
@given(
    subject=st.text(_PRINTABLE, max_size=200),
    name=st.text(_PRINTABLE, max_size=80),
    unsubscribe=st.text(st.sampled_from("ab<>:/ \t=-.,"), max_size=300).filter(lambda s: s.strip() == s),
    text=_BODY,
    html=_BODY,
    use_ed25519=st.booleans(),
)
def test_any_assembled_message_verifies(
    subject: str, name: str, unsubscribe: str, text: str, html: str, use_ed25519: bool
) -> None:
    """Whatever the subject, display name, extra header and bodies, dkimpy verifies."""
    key = ED25519_KEY if use_ed25519 else RSA_KEY
    signer = DKIMSigner(domain=DOMAIN, selector="p", private_key=key)
    headers = (("List-Unsubscribe", unsubscribe),) if unsubscribe else ()
    message = assemble(subject=subject, to=Mailbox("to@example.com", name), text=text, html=html, headers=headers)
    assert verifies(sign_message(message, [signer]), dns_for((signer, key)))


_RAW_PIECES = st.sampled_from([b"a", b"xyz", b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\r\n\r\n", b"\r\n "])


@settings(max_examples=150)
@given(
    subject=st.lists(_RAW_PIECES.filter(lambda p: not p.startswith(b"\r\n")) | st.just(b"\r\n "), max_size=12),
    body=st.lists(_RAW_PIECES, max_size=40),
)
def test_any_raw_white_space_verifies(subject: list[bytes], body: list[bytes]) -> None:
    """Raw runs of spaces, tabs, folds and blank lines in a header and the body verify."""
    signer = DKIMSigner(domain=DOMAIN, selector="p", private_key=ED25519_KEY)
    value = b"".join(subject)
    message = b"From: a@acme.example\r\nSubject:" + value + b"\r\n\r\n" + b"".join(body)
    assert verifies(sign_message(message, [signer]), dns_for((signer, ED25519_KEY)))

