"""Reading what API callers send: pure checks that turn JSON into leads and events, or a 400.

Every check names the field it refused (`events[2].type`, `attributes.size`) and what to send
instead. mailer.api runs them all before it writes anything, so a refused request changes
nothing.
"""

from __future__ import annotations

import json
import unicodedata
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from email_validator import EmailNotValidError

from mailer.csvimport import normalize_email
from mailer.leads import Lead
from mailer.scoremodel import API_EVENT_TYPES, STAGES, canonical_stage

MAX_EVENTS = 1000  # events per POST /api/events
MAX_TEXT = 2000  # characters of a profile field, an event name or an id
MAX_ATTRIBUTES = 100  # attributes per lead in one call
MAX_ATTRIBUTE_NAME = 100
FUTURE_SKEW = timedelta(minutes=5)  # an event's `at` may be this far ahead of our clock (clocks drift)
PROFILE_FIELDS = ("first_name", "last_name", "company", "job_title", "source")
LEAD_KEYS = ("email", *PROFILE_FIELDS, "timezone", "attributes", "list", "stage")
EVENT_KEYS = ("email", "type", "name", "at", "id", "data")


class ApiError(Exception):
    """A refused request: its HTTP status, what is wrong, the field, and any extra JSON to answer with."""

    def __init__(self, status: int, error: str, field: str | None = None, **extra: Any) -> None:
        super().__init__(error)
        self.status, self.error, self.field, self.extra = status, error, field, extra


def bad(field: str, error: str, **extra: Any) -> ApiError:
    return ApiError(400, error, field, **extra)


@dataclass(frozen=True)
class LeadInput:
    """A PUT /api/leads/{email} body, checked."""

    lead: Lead  # the written fields; empty ones are left as stored, attributes written null are cleared
    list_name: str | None
    stage: str | None  # the stage asked for, canonical


@dataclass(frozen=True)
class EventInput:
    """One posted event, checked: the arguments of Store.record_api_event."""

    email: str
    type: str
    at: datetime
    name: str
    data: dict[str, Any]
    key: str | None  # "api:" + the caller's id: never equal to a stored row's key ("e<row id>")

    @property
    def id(self) -> str | None:
        """The caller's own id, as they sent it."""
        return self.key.removeprefix("api:") if self.key is not None else None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes, *, optional: bool = False) -> Any:
    """The JSON value of a body (None for an empty optional one)."""
    if optional and not raw.strip():
        return None
    try:
        return json.loads(raw, parse_constant=_reject_constant)  # NaN and Infinity are not JSON (RFC 8259 6)
    except (ValueError, RecursionError) as error:  # RecursionError: nesting deeper than Python's stack
        problem = str(error) if isinstance(error, json.JSONDecodeError) else "too deeply nested"
        raise bad("body", f"not JSON: {problem}") from None


def parse_lead(email: str, body: object) -> LeadInput:
    """The lead a PUT body describes for the address in the path."""
    fields = as_object(body, "")
    unknown = [key for key in fields if key not in LEAD_KEYS]
    if unknown:
        raise bad(unknown[0], f"unknown field {unknown[0]!r}", allowed=list(LEAD_KEYS))
    if "email" in fields and address(text(fields, "email"), "email") != email:
        raise bad("email", "differs from the address in the path")
    profile = {name: one_line(fields, name) for name in PROFILE_FIELDS}
    zone = text(fields, "timezone")
    timezone = _zone_names().get(zone.casefold()) if zone else None
    if zone and timezone is None:
        raise bad("timezone", f"unknown time zone {zone!r}: use an IANA name such as Asia/Tokyo")
    lead = Lead(
        email=email, first_name=profile["first_name"], last_name=profile["last_name"], company=profile["company"],
        job_title=profile["job_title"], timezone=timezone, source=profile["source"] or None,
        attributes=_attributes(fields.get("attributes", {})),
    )
    stage = stage_of(fields, "stage") if "stage" in fields else None
    return LeadInput(lead, one_line(fields, "list") or None, stage)


def parse_events(body: object, *, now: datetime) -> list[EventInput]:
    """The events of a POST /api/events body: one object or a list of them."""
    if not isinstance(body, list):
        return [_event(body, "", now)]
    if not body:
        raise bad("events", "an empty list: post one event or a list of them")
    if len(body) > MAX_EVENTS:
        raise bad("events", f"{len(body)} events in one call; at most {MAX_EVENTS}")
    return [_event(item, f"events[{number}].", now) for number, item in enumerate(body)]


def _event(item: object, prefix: str, now: datetime) -> EventInput:
    event = as_object(item, prefix)
    unknown = [key for key in event if key not in EVENT_KEYS]
    if unknown:
        raise bad(prefix + unknown[0], f"unknown field {unknown[0]!r}", allowed=list(EVENT_KEYS))
    kind = event.get("type")
    if kind not in API_EVENT_TYPES:
        raise bad(prefix + "type", f"unknown event type {kind!r}: use one of " + ", ".join(API_EVENT_TYPES),
                  allowed=list(API_EVENT_TYPES))
    if "email" not in event:
        raise bad(prefix + "email", "missing: the lead's address")
    email = address(text(event, "email", prefix), prefix + "email")
    name = one_line(event, "name", prefix)
    if not name:
        raise bad(prefix + "name", "missing: the form, page or product event name")
    data = event.get("data", {})
    if not isinstance(data, dict):
        raise bad(prefix + "data", "must be an object")
    at = now
    if "at" in event:
        at = _instant(text(event, "at", prefix), prefix + "at")
        if at > now + FUTURE_SKEW:
            raise bad(prefix + "at", "is in the future")
    written_id = event.get("id")
    if isinstance(written_id, int) and not isinstance(written_id, bool):  # many systems number their events
        event = {**event, "id": str(written_id)}
    identifier = one_line(event, "id", prefix)
    return EventInput(email, str(kind), at, name, data, f"api:{identifier}" if identifier else None)


def as_object(value: object, prefix: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(prefix.rstrip(".") or "body", "must be a JSON object")
    return value


def text(body: Mapping[str, Any], key: str, prefix: str = "") -> str:
    """A string field ("" when absent or null)."""
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad(prefix + key, f"must be a string, not {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise bad(prefix + key, f"longer than {MAX_TEXT} characters")
    return value


def one_line(body: Mapping[str, Any], key: str, prefix: str = "") -> str:
    """A text field as it will be stored: one line (names end up in mail headers), NFC, stripped."""
    value = text(body, key, prefix)
    if any(char in value for char in "\r\n\x00"):
        raise bad(prefix + key, "contains a line break or NUL")
    # NFC: "Zoë" typed on a Mac (decomposed) and elsewhere must be one name, as in mailer.csvimport
    return unicodedata.normalize("NFC", value.strip())


def address(written: str, field: str) -> str:
    """The address as the store keeps it (mailer.csvimport.normalize_email)."""
    try:
        return normalize_email(written)
    except EmailNotValidError as error:
        raise bad(field, f"not an email address: {error}") from None


def stage_of(source: Mapping[str, Any], key: str) -> str:
    written = source.get(key)
    stage = canonical_stage(written) if isinstance(written, str) else None
    if stage is None:
        raise bad(key, f"unknown stage {written!r}: use one of " + ", ".join(STAGES), allowed=list(STAGES))
    return stage


def whole_number(query: Mapping[str, str], key: str, *, default: int, least: int, most: int) -> int:
    written = query.get(key)
    if written is None:
        return default
    if not written.isascii() or not written.isdigit() or not least <= int(written) <= most:
        raise bad(key, f"not a whole number from {least} to {most}: {written!r}")
    return int(written)


def _instant(written: str, field: str) -> datetime:
    try:
        moment = datetime.fromisoformat(written)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise bad(field, f"not an ISO 8601 instant with a time zone: {written!r}; write e.g. 2026-01-05T09:00:00Z")
    return moment


def _attributes(value: object) -> dict[str, str | int | float | bool | None]:
    """The attributes to write; None for one written null, which clears it (a CRM emptying a BANT field)."""
    if not isinstance(value, dict):
        raise bad("attributes", "must be an object of names and values")
    if len(value) > MAX_ATTRIBUTES:
        raise bad("attributes", f"more than {MAX_ATTRIBUTES} attributes in one call")
    attributes: dict[str, str | int | float | bool | None] = {}
    for name, item in value.items():
        field = f"attributes.{name}"
        if not name.strip() or len(name) > MAX_ATTRIBUTE_NAME:
            raise bad(field, f"an attribute name must be 1 to {MAX_ATTRIBUTE_NAME} characters")
        if isinstance(item, str):
            attributes[name] = one_line(value, name, "attributes.")
        elif isinstance(item, (bool, int, float)) or item is None:
            # null clears the attribute; "" leaves it as stored, as an empty cell does in an import
            attributes[name] = item
        else:
            raise bad(field, "must be text, a number, true/false, or null to clear it")
    return attributes


@cache
def _zone_names() -> Mapping[str, str]:
    """IANA zone names by their case-folded spelling, so "asia/tokyo" means Asia/Tokyo."""
    return {name.casefold(): name for name in zoneinfo.available_timezones()}
