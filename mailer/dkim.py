"""DKIM signatures (RFC 6376) on outgoing messages: rsa-sha256 and ed25519-sha256 (RFC 8463).

Written by hand on purpose: dkimpy, the maintained Python signer, does its RSA in pure Python
(about 7 ms a message here), and no maintained library signs through OpenSSL. Here the
private-key operation goes through `cryptography` (OpenSSL, about 0.3 ms for RSA-2048) and
the rest is the small part of RFC 6376 a signer needs: relaxed/relaxed canonicalization
(3.4.2, 3.4.4), the body hash (3.7), the header hash (3.7, 5.4.2) and the signature field
(3.5). There is no l= (8.2: it lets anyone append content) and no x=; t= is always written.
dkimpy stays in the tests and the benchmark as the verifier that proves these signatures.

Per signer the key, the A-label domain and the constant tags are prepared once. Per message
`sign_message` splits the header once, hashes the body once for every signer (all of them
use relaxed canonicalization and SHA-256) and makes one private-key operation per signer.

Messages are the octets `mailer.mime.MessageLayout.assemble` returns: CRLF line ends, header,
empty line, body, before dot-stuffing. A bare CR or LF is not canonicalized in any defined way
(RFC 5322 2.3 forbids them, and relays rewrite them as they like), so no signer can promise a
signature over one survives; `MessageLayout` never writes one. A body whose last line has no
CRLF is signed as it arrives: the SMTP client ends it with one (RFC 5321 4.1.1.4; aiosmtplib
does), so white space at its end is not signed either.

Which headers are signed: those of `SIGNED_HEADERS` that the message has, each as many times
as it occurs, signed from the bottom up (RFC 6376 5.4.2). From is listed once more than it
occurs ("oversigned", RFC 6376 8.15), so a second From added in transit, the classic way to
show a reader another sender under our signature, breaks it; dkimpy oversigns From alone for
the same reason. No other header is oversigned: an absent header is never listed, so relays
and lists that add a header of their own (List-Id, Reply-To) do not break the signature.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mailer.errors import ConfigError

PrivateKey: TypeAlias = rsa.RSAPrivateKey | Ed25519PrivateKey

SIGNED_HEADERS = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "mime-version",
    "content-type",
)
# See the module docstring: a second From must break the signature.
_OVERSIGNED = frozenset({b"from"})

# RFC 8301 3.2: signers "MUST use RSA keys of at least 1024 bits" (and SHOULD use 2048).
MIN_RSA_BITS = 1024
# RFC 5322 2.1.1: lines SHOULD be no more than 78 characters.
_FOLD_AT = 78
# Room kept after "b=" on its line, so the value never starts on a line of its own.
_B_TAG_ROOM = 8
_BODY_HASH_LENGTH = 44  # base64 of the 32 octets of SHA-256
# Header shapes (which signed headers a message has, how often) a signer remembers; the
# messages of one step have one shape, a whole campaign a handful.
_TEMPLATE_CACHE_SIZE = 64
_KEY_HINT = (
    "create one with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out {file}`"
    " (or `-algorithm ed25519`) and publish its public key in DNS"
)

# RFC 5322 2.2.3: a field ends at a CRLF that is not followed by white space (a fold).
_FIELD_END = re.compile(rb"\r\n(?![ \t])")
# Two or more spaces. The literal prefix lets the regex engine jump between runs with its
# fast string search; a pattern starting with a class ([ \t]) visits every octet, 5 times
# slower on our bodies, and halving runs with bytes.replace is slower still.
_SPACES = re.compile(rb"  +")
# RFC 6376 3.1 and 3.5: selector and d= are sub-domains: LDH labels, as A-labels.
_LDH_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN_NAME = re.compile(rf"{_LDH_LABEL}(?:\.{_LDH_LABEL})*")


class DKIMKeyError(ConfigError):
    """A DKIM private key file is unreadable, not PEM, encrypted or of an unusable kind."""


def load_private_key(path: Path) -> PrivateKey:
    """The RSA or Ed25519 key in the PEM file at `path` (PKCS#1 or PKCS#8, unencrypted).

    Raises `DKIMKeyError` naming the file when it cannot be used.
    """
    try:
        pem = path.read_bytes()
    except OSError as error:
        raise DKIMKeyError(
            f"cannot read the DKIM key ({error.strerror})", file=str(path), hint=_KEY_HINT.format(file=path)
        ) from None
    return parse_private_key(pem, path)


def parse_private_key(pem: bytes, path: Path) -> PrivateKey:
    """The RSA or Ed25519 key in `pem`, read from the file at `path` (named in errors)."""
    hint = _KEY_HINT.format(file=path)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # what cryptography raises for a key that needs a password
        raise DKIMKeyError(
            "the DKIM key is encrypted",
            file=str(path),
            hint=f"decrypt it with `openssl pkey -in {path} -out {path}.plain`, or {hint}",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise DKIMKeyError("not a PEM private key", file=str(path), hint=hint) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DKIMKeyError(
                f"the RSA key has {key.key_size} bits; RFC 8301 requires at least {MIN_RSA_BITS}",
                file=str(path),
                hint=hint,
            )
        return key
    if isinstance(key, Ed25519PrivateKey):
        return key
    raise DKIMKeyError(
        f"the key is a {type(key).__name__}; DKIM signs with RSA or Ed25519 keys",
        file=str(path),
        hint=hint,
    )


def generate_rsa_key(path: Path, bits: int = 2048) -> None:
    """Write a new RSA key to `path` as PKCS#8 PEM, readable by the owner only (0600).

    Never overwrites: a key whose public half is in DNS must not be replaced by accident
    (`DKIMKeyError` when `path` exists). The key appears at `path` complete or not at all.
    """
    if bits < MIN_RSA_BITS:
        raise ValueError(f"RFC 8301 3.2: RSA keys have at least {MIN_RSA_BITS} bits")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        os.link(partial, path)  # fails when `path` exists, unlike a rename
    except FileExistsError:
        raise DKIMKeyError(
            "a file is already there; not overwriting a key that may be published",
            file=str(path),
            hint="choose another file, or remove this one first",
        ) from None
    except OSError as error:
        raise DKIMKeyError(
            f"cannot write the DKIM key ({error.strerror})", file=str(path)
        ) from None
    finally:
        partial.unlink(missing_ok=True)


def public_key_record(private_key: PrivateKey) -> str:
    """The TXT record value to publish at `<selector>._domainkey.<domain>` (RFC 6376 3.6.1).

    RSA keys go as DER SubjectPublicKeyInfo (what RFC 6376 errata 3017 and every verifier
    expect), Ed25519 keys as the 32 raw octets (RFC 8463 4). A value longer than 255 octets
    (RSA-2048 and up) is published as several strings of one TXT record (RFC 7208 3.3 does
    the same for SPF); DNS tools split it themselves.
    """
    public_key = private_key.public_key()
    if isinstance(private_key, Ed25519PrivateKey):
        kind = "ed25519"
        octets = public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    else:
        kind = "rsa"
        octets = public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return f"v=DKIM1; k={kind}; p={base64.b64encode(octets).decode('ascii')}"


class DKIMSigner:
    """Signs messages for one domain with one key: rsa-sha256 or ed25519-sha256."""

    __slots__ = ("_head", "_headers", "_key", "_templates", "algorithm", "domain", "selector")

    def __init__(
        self,
        *,
        domain: str,
        selector: str,
        private_key: PrivateKey,
        headers: Sequence[str] = SIGNED_HEADERS,
    ) -> None:
        """Raises `ValueError` for a domain or selector that is not a domain name or a header
        list without From (RFC 6376 5.4 requires it), `TypeError` for a key of another kind."""
        if isinstance(private_key, rsa.RSAPrivateKey):
            self.algorithm = "rsa-sha256"
        elif isinstance(private_key, Ed25519PrivateKey):
            self.algorithm = "ed25519-sha256"
        else:
            raise TypeError(f"cannot sign DKIM with a {type(private_key).__name__}")
        self.domain = _a_label("domain", domain)
        self.selector = _a_label("selector", selector)
        names = [name.strip().lower() for name in headers]
        if "from" not in names:
            raise ValueError("RFC 6376 5.4: the From header field MUST be signed")
        if len(set(names)) != len(names) or "dkim-signature" in names:
            raise ValueError(f"{list(headers)!r} repeats a header or names DKIM-Signature")
        self._key = private_key
        self._headers = tuple(name.encode("ascii") for name in names)
        tags = ("v=1;", f"a={self.algorithm};", "c=relaxed/relaxed;",
                f"d={self.domain};", f"s={self.selector};")  # fmt: skip
        self._head = _fold([], "DKIM-Signature:", ((" ", tag) for tag in tags))
        self._templates: dict[tuple[tuple[int, ...], int], _FieldTemplate] = {}

    def sign(self, message: bytes, *, timestamp: int | None = None) -> bytes:
        """The DKIM-Signature field, CRLF included, to put before `message`.

        `timestamp` (t=) defaults to now. Raises `ValueError` when `message` has no From.
        """
        parsed = _Message(message, self._headers)
        return self._signature(parsed, _body_hash(parsed.body), _now(timestamp))

    def _signature(self, message: _Message, body_hash: bytes, timestamp: int) -> bytes:
        fields = message.canonical
        counts = tuple(len(fields.get(name, ())) for name in self._headers)
        t = b"%d" % timestamp
        template = self._templates.get((counts, len(t)))
        if template is None:
            template = self._template(counts, len(t))
        # RFC 6376 5.4.2: the n-th listing of a name signs its n-th occurrence from the
        # bottom; a listing beyond the last occurrence signs nothing (the oversigned From).
        signed = [field for name in self._headers for field in reversed(fields.get(name, ()))]
        canonical = template.canonical
        # RFC 6376 3.7: the signature field itself comes last, relaxed, b= empty, no CRLF.
        data = b"".join((*signed, canonical[0], t, canonical[1], body_hash, canonical[2]))
        if isinstance(self._key, rsa.RSAPrivateKey):
            signature = self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        else:
            # RFC 8463 3: Ed25519 (PureEdDSA) signs the SHA-256 hash of the data.
            signature = self._key.sign(hashlib.sha256(data).digest())
        value = base64.b64encode(signature)
        # FWS may fall anywhere in the b= value (RFC 6376 3.5); fill every line to 78.
        room = template.room
        b_lines = [value[:room]]
        b_lines.extend(value[at : at + _FOLD_AT - 1] for at in range(room, len(value), _FOLD_AT - 1))
        folded = template.folded
        b_value = b"\r\n ".join(b_lines)
        return b"".join((folded[0], t, folded[1], body_hash, folded[2], b_value, b"\r\n"))

    def _template(self, counts: tuple[int, ...], t_length: int) -> _FieldTemplate:
        """The field for messages with `counts` of each signed header, holes for t= and bh=.

        Folding depends only on the lengths of t= and bh= (always 44 characters for
        SHA-256), so the template serves every message of that shape.
        """
        names: list[str] = []
        for name, count in zip(self._headers, counts):
            names.extend([name.decode("ascii")] * (count + (name in _OVERSIGNED and count > 0)))
        if "from" not in names:
            raise ValueError("the message has no From field; RFC 6376 5.4 requires one")
        h_tag = [("", f"{name}:") for name in names]
        h_tag[0] = (" ", f"h={names[0]}:")
        h_tag[-1] = ("", f"{names[-1]};")
        t_hole, bh_hole = "\x01" * t_length, "\x02" * _BODY_HASH_LENGTH  # never in a tag
        lines, line = _fold(
            list(self._head[0]), self._head[1],
            ((" ", f"t={t_hole};"), *h_tag, (" ", f"bh={bh_hole};"),
             (" ", "b=" + " " * _B_TAG_ROOM)),
        )  # fmt: skip
        line = line[:-_B_TAG_ROOM]
        folded = "\r\n".join((*lines, line)).encode("ascii")
        holes = (t_hole.encode("ascii"), bh_hole.encode("ascii"))
        template = _FieldTemplate(
            folded=_split_at(folded, holes),
            canonical=_split_at(_relaxed_field(folded)[:-2], holes),
            room=_FOLD_AT - len(line),
        )
        if len(self._templates) >= _TEMPLATE_CACHE_SIZE:
            self._templates.clear()
        self._templates[counts, t_length] = template
        return template


@dataclass(frozen=True, slots=True)
class _FieldTemplate:
    """A DKIM-Signature field up to "b=", cut where the t= and bh= values go."""

    folded: tuple[bytes, bytes, bytes]  # as written
    canonical: tuple[bytes, bytes, bytes]  # relaxed, as hashed
    room: int  # characters left for the b= value on its line


def _split_at(text: bytes, holes: tuple[bytes, bytes]) -> tuple[bytes, bytes, bytes]:
    before, _, rest = text.partition(holes[0])
    between, _, after = rest.partition(holes[1])
    return before, between, after


def sign_message(
    message: bytes, signers: Sequence[DKIMSigner], *, timestamp: int | None = None
) -> bytes:
    """`message` with one DKIM-Signature per signer before it, in the order of `signers`.

    The header is split and the body hashed once for all signers.
    """
    if not signers:
        return message
    wanted = {name for signer in signers for name in signer._headers}
    parsed = _Message(message, wanted)
    body_hash = _body_hash(parsed.body)
    now = _now(timestamp)
    return b"".join([*(signer._signature(parsed, body_hash, now) for signer in signers), message])


class _Message:
    """A message split once: its body and the relaxed form of every field a signer wants."""

    __slots__ = ("body", "canonical")

    def __init__(self, message: bytes, wanted: Collection[bytes]) -> None:
        end = -2 if message.startswith(b"\r\n") else message.find(b"\r\n\r\n")
        if end == -1:  # a header and no body
            header, self.body = message.removesuffix(b"\r\n"), b""
        else:
            header, self.body = message[: max(end, 0)], message[end + 4 :]
        self.canonical: dict[bytes, list[bytes]] = {}
        for field in _FIELD_END.split(header):
            colon = field.find(b":")
            name = field[:colon].rstrip(b" \t").lower()
            if colon > 0 and name in wanted:
                self.canonical.setdefault(name, []).append(_relaxed_field(field))


def _relaxed_field(field: bytes) -> bytes:
    """RFC 6376 3.4.2: name in lower case, folds removed, WSP runs as one space, no WSP
    around the colon or at the end; CRLF appended."""
    name, _, value = field.partition(b":")
    value = _single_spaces(value.replace(b"\r\n", b"")).strip(b" ")
    return b"%s:%s\r\n" % (name.rstrip(b" \t").lower(), value)


def _body_hash(body: bytes) -> bytes:
    """bh=: SHA-256 of the body after relaxed canonicalization (RFC 6376 3.4.4, 3.7)."""
    body = _single_spaces(body)
    # WSP runs are single spaces now, so one replace removes all WSP at the end of a line.
    body = body.replace(b" \r\n", b"\r\n")
    # Empty lines at the end go, and white space on the last line; a non-empty body ends
    # with CRLF, an empty one stays empty.
    body = body.rstrip(b" \t\r\n")
    digest = hashlib.sha256(body)
    if body:
        digest.update(b"\r\n")
    return base64.b64encode(digest.digest())


def _single_spaces(text: bytes) -> bytes:
    """Every run of spaces and tabs in `text` as one space."""
    if b"\t" in text:
        text = text.replace(b"\t", b" ")
    return _SPACES.sub(b" ", text) if b"  " in text else text


def _fold(
    lines: list[str], line: str, words: Iterable[tuple[str, str]]
) -> tuple[list[str], str]:
    """Each (separator, word) added to the open `line`, or to a new line after a fold (CRLF
    and a space) where the line would pass 78 characters. Returns the full lines and the
    open one.

    Tags are separated by a space and may be folded between (RFC 6376 3.2); the names of
    h= are not, but may be folded after any colon (RFC 6376 3.5 sig-h-tag).
    """
    for separator, word in words:
        if len(line) + len(separator) + len(word) > _FOLD_AT:
            lines.append(line)
            line = " " + word
        else:
            line += separator + word
    return lines, line


def _a_label(what: str, name: str) -> str:
    """`name` as ASCII, Unicode labels as A-labels (RFC 6376 3.5: d= and s= are A-labels)."""
    ascii_name = name
    if not name.isascii():
        import idna  # a dependency of email-validator; IDNA 2008 with UTS 46 mapping

        try:
            ascii_name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise ValueError(f"DKIM {what} {name!r} is not a domain name") from None
    if not _DOMAIN_NAME.fullmatch(ascii_name) or len(ascii_name) > 253:
        raise ValueError(f"DKIM {what} {name!r} is not a domain name")
    return ascii_name.lower()


def _now(timestamp: int | None) -> int:
    if timestamp is None:
        return int(time.time())
    if timestamp < 0:
        raise ValueError(f"t= is seconds since 1970 (RFC 6376 3.5), not {timestamp}")
    return timestamp
