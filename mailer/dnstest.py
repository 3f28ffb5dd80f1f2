"""A small authoritative DNS server on loopback that answers from zone data, for tests,
benches and the demo.

Zones use the "zonedata" format of the openspf RFC 7208 test suite: a name maps to a list of
records, each ``{"TXT": "text" | ["part1", "part2"]}``, ``{"SPF": ...}``, ``{"A": "1.2.3.4"}``,
``{"AAAA": "::1"}``, ``{"MX": [10, "mx.example.com"]}``, ``{"PTR": "host.example.com"}``,
``{"CNAME": "x.example."}``, or the bare string ``"TIMEOUT"``. The suite's conventions hold
(they are what its expectations assume, as in pyspf's ``test/testspf.py``):

* a bare ``TIMEOUT`` makes every query for the name go unanswered, except queries for a type
  listed *before* it, which are answered with those records; ``{"TXT": "TIMEOUT"}`` makes only
  that type go unanswered;
* a name with ``SPF`` records and no ``TXT`` entry also serves those strings as TXT records
  (RFC 7208 readers ask for TXT only); ``{"TXT": "NONE"}`` means "no TXT records here";
* names are case-insensitive; a name with no entries is NXDOMAIN, a name that has entries but
  none of the asked type is NOERROR with an empty answer (NODATA); CNAMEs are followed within
  the zone data, as an authoritative server does.

The server speaks UDP and TCP on the same ephemeral port of 127.0.0.1; answers too big for
the client's UDP size come back truncated so that the client retries over TCP (RFC 1035
4.2.1, RFC 7766).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.TXT
import dns.rrset

TIMEOUT = "TIMEOUT"
TXT_STRING_MAX = 255  # RFC 1035 3.3: a <character-string> is at most 255 octets
UDP_PAYLOAD_DEFAULT = 512  # RFC 1035 4.2.1: UDP messages without EDNS are at most 512 octets
QUERY_LOG_MAX = 10_000  # queries remembered; the oldest half goes when full
CNAME_CHAIN_MAX = 8  # enough for any test chain; a loop stops when a name repeats anyway
_TYPES = {"A", "AAAA", "CNAME", "MX", "PTR", "SPF", "TXT"}


@dataclass(frozen=True)
class _Entry:
    rdtype: dns.rdatatype.RdataType | None  # None: a bare TIMEOUT
    rdata: dns.rdata.Rdata | None  # None: this entry is a timeout


def zone_key(name: str) -> str:
    """The lookup key of a domain name: lower case, without the trailing dot."""
    return name.lower().rstrip(".")


def name_from_text(text: str) -> dns.name.Name:
    """A DNS name whose labels are `text` split on dots, taken literally (no backslash escapes),
    so that names with spaces, '%' or ':' (all legal in DNS) survive; raises
    dns.name.EmptyLabel, LabelTooLong or NameTooLong for names DNS cannot carry."""
    stripped = text[:-1] if text.endswith(".") else text
    if not stripped:
        return dns.name.root
    return dns.name.Name([label.encode("utf-8") for label in stripped.split(".")] + [b""])


def name_to_text(name: dns.name.Name) -> str:
    """The inverse of name_from_text: labels joined with dots, no trailing dot."""
    return ".".join(label.decode("utf-8", "replace") for label in name.labels if label)


def _strings(value: Any) -> list[bytes]:
    parts = [value] if isinstance(value, str) else list(value)
    chunks: list[bytes] = []
    for part in parts:
        raw = str(part).encode("utf-8")
        chunks.extend(raw[at : at + TXT_STRING_MAX] for at in range(0, len(raw), TXT_STRING_MAX))
        if not raw:
            chunks.append(b"")
    # DNS cannot carry a TXT record of no strings at all; the nearest is one empty string
    return chunks or [b""]


def _rdata(kind: str, value: Any) -> dns.rdata.Rdata:
    rdclass = dns.rdataclass.IN
    if kind in ("TXT", "SPF"):
        return dns.rdtypes.ANY.TXT.TXT(rdclass, dns.rdatatype.from_text(kind), _strings(value))
    if kind == "MX":
        preference, exchange = value
        value = f"{int(preference)} {name_from_text(str(exchange)).to_text()}"
    elif kind in ("PTR", "CNAME"):
        value = name_from_text(str(value)).to_text()  # escaped, so any label text survives
    return dns.rdata.from_text(rdclass, dns.rdatatype.from_text(kind), str(value))


def _compile(records: Sequence[Any] | None) -> list[_Entry]:
    entries: list[_Entry] = []
    copied: list[_Entry] = []  # SPF strings served as TXT too, when the name lists no TXT
    has_txt = False
    for record in records or ():
        if record == TIMEOUT:
            entries.append(_Entry(None, None))
            continue
        if not isinstance(record, Mapping) or len(record) != 1:
            raise ValueError(f"zone record must be one {{TYPE: value}} or 'TIMEOUT', not {record!r}")
        ((kind, value),) = record.items()
        kind = str(kind).upper()
        if kind not in _TYPES:
            raise ValueError(f"unsupported zone record type {kind!r} (use one of {sorted(_TYPES)})")
        has_txt = has_txt or kind == "TXT"
        rdtype = dns.rdatatype.from_text(kind)
        if value == TIMEOUT:
            entries.append(_Entry(rdtype, None))
        elif not (kind == "TXT" and value == "NONE"):
            entries.append(_Entry(rdtype, _rdata(kind, value)))
            if kind == "SPF":
                copied.append(_Entry(dns.rdatatype.TXT, _rdata("TXT", value)))
    return entries if has_txt else entries + copied


def _compile_zones(zones: Mapping[str, Sequence[Any]]) -> dict[str, list[_Entry]]:
    """Check and convert zone data once, so that answering a query is only a dict lookup."""
    compiled: dict[str, list[_Entry]] = {}
    for name, records in zones.items():
        compiled.setdefault(zone_key(str(name)), []).extend(_compile(records))
    return compiled


def _records(entries: list[_Entry], rdtype: dns.rdatatype.RdataType) -> list[dns.rdata.Rdata] | None:
    """The records of `rdtype`, or None when the query must go unanswered."""
    found: list[dns.rdata.Rdata] = []
    for entry in entries:
        if entry.rdata is None:
            if entry.rdtype == rdtype or (entry.rdtype is None and not found):
                return None
            if entry.rdtype is None:
                break
        elif entry.rdtype == rdtype:
            found.append(entry.rdata)
    return found


def _answer(zones: dict[str, list[_Entry]], query: dns.message.Message) -> dns.message.Message | None:
    """The response to `query` from compiled zones, or None to stay silent (a timeout)."""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response
    question = query.question[0]
    owner, rdtype = question.name, question.rdtype
    seen: set[str] = set()
    while len(seen) < CNAME_CHAIN_MAX:
        key = name_to_text(owner).lower()
        if key in seen:
            break  # a CNAME loop: hand out the chain so far and let the client decide
        seen.add(key)
        entries = zones.get(key)
        if not entries:
            response.set_rcode(dns.rcode.NXDOMAIN)
            break
        found = _records(entries, rdtype)
        if found is None:
            return None
        if found or rdtype == dns.rdatatype.CNAME:
            if found:
                response.answer.append(dns.rrset.from_rdata_list(owner, 0, found))
            break
        aliases = _records(entries, dns.rdatatype.CNAME)
        if aliases is None:
            return None
        if not aliases:
            break  # NODATA
        response.answer.append(dns.rrset.from_rdata_list(owner, 0, aliases[:1]))
        target = aliases[0]
        assert isinstance(target, dns.rdtypes.ANY.CNAME.CNAME)
        owner = target.target
    return response


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: ZoneServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the selector loop's datagram transport does not subclass DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.server.reply(data, udp=True)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class ZoneServer:
    """Answers DNS queries on 127.0.0.1 (UDP and TCP, one ephemeral port) from zone data."""

    def __init__(self, zones: Mapping[str, Sequence[Any]]) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        # (name, type) as asked, for assertions; bounded so that a long demo does not grow it forever
        self.queries: list[tuple[str, str]] = []
        self._zones = _compile_zones(zones)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    def set_zones(self, zones: Mapping[str, Sequence[Any]]) -> None:
        """Replace the zone data (one server can serve many scenarios in turn)."""
        self._zones = _compile_zones(zones)

    def reply(self, wire: bytes, *, udp: bool) -> bytes | None:
        """The wire reply to one query message, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # not a DNS query we can read; a real server would drop it too
        if query.question:
            question = query.question[0]
            self.queries.append((name_to_text(question.name), dns.rdatatype.to_text(question.rdtype)))
            if len(self.queries) > QUERY_LOG_MAX:
                del self.queries[: QUERY_LOG_MAX // 2]
        response = _answer(self._zones, query)
        if response is None:
            return None
        limit = max(query.payload, UDP_PAYLOAD_DEFAULT) if udp and query.edns >= 0 else UDP_PAYLOAD_DEFAULT
        try:
            return response.to_wire(max_size=limit if udp else 65535)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(20):  # the TCP port matching a fresh UDP port is almost always free
            transport, _protocol = await loop.create_datagram_endpoint(lambda: _UDPProtocol(self), local_addr=(self.host, 0))
            port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError:
                transport.close()
                continue
            self._udp, self.port = transport, port
            return
        raise OSError("no free port on 127.0.0.1 for both UDP and TCP")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._connections):
                writer.close()
            await self._tcp.wait_closed()
            self._tcp = None

    async def __aenter__(self) -> ZoneServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()

    def resolver(self, *, timeout: float = 2.0) -> dns.asyncresolver.Resolver:
        """A resolver that asks only this server: no system configuration, no search
        domains, no cache, one `timeout` for the whole of each query."""
        if not self.port:
            raise RuntimeError("start the ZoneServer before asking for its resolver")
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.timeout = timeout
        resolver.lifetime = timeout
        resolver.search = []
        resolver.use_search_by_default = False
        resolver.cache = None
        resolver.retry_servfail = False
        return resolver

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                # RFC 1035 4.2.2: each TCP message is preceded by its two-octet length
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = self.reply(await reader.readexactly(length), udp=False)
                if reply is not None:
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
