"""Error catalogues of particular receiving services, keyed by their own error labels or texts.

Large receivers document their refusals with labels of their own (Orange's ``OFR_506``,
La Poste's ``LPN007_426``, GoDaddy's ``IB607``, Spectrum's ``AUP#I-1350``) or fixed phrases that
mean something narrower than the status code they come with. A label is unmistakable wherever
it appears; a phrase is only trusted when the remote host (or the recipient's domain) belongs to
the service. The tables follow the services' published catalogues, as collected by Sisimai's
``rhost/for-*.go`` (sisimai/go-sisimai, BSD 2-Clause, © azumakuniyuki and the sisimai
development team); the URL of each catalogue is given per table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailer.reasons import Reason

R = Reason

# Orange / Wanadoo (OFR, OUK) and La Poste (LPN): the last three digits of the label.
# https://www.postmastery.com/orange-postmaster-smtp-error-codes-ofr/ , https://smtpfieldmanual.com/provider/orange
_FRANCE_LABEL = re.compile(r"\b(?:lpnaaa|lpn|ofr|ouk)[0-9]*[_-]?([0-9]{3})\b")
_FRANCE_CODES: dict[str, Reason] = {
    "101": R.BLOCKED, "102": R.BLOCKED, "103": R.BLOCKED, "104": R.TOOMANYCONN,
    "305": R.SECURITYERROR, "401": R.AUTHFAILURE, "402": R.SECURITYERROR, "403": R.REJECTED,
    "405": R.REJECTED, "415": R.REJECTED, "416": R.USERUNKNOWN, "417": R.MAILBOXFULL,
    "420": R.SUSPEND, "421": R.REJECTED, "426": R.SUSPEND, "505": R.SYSTEMERROR,
    "506": R.SPAMDETECTED, "510": R.BLOCKED, "514": R.MESGTOOBIG, "517": R.AUTHFAILURE,
    "630": R.POLICYVIOLATION, "999": R.BLOCKED,
}

# GoDaddy (secureserver.net): https://ca.godaddy.com/help/fix-rejected-email-with-a-bounce-error-40685
_GODADDY_LABEL = re.compile(r"\b(ib[0-9]{3})\b")
_GODADDY_CODES: dict[str, Reason] = {
    "ib401": R.SECURITYERROR, "ib501": R.NOTCOMPLIANTRFC, "ib502": R.NOTCOMPLIANTRFC, "ib506": R.REJECTED,
    "ib508": R.AUTHFAILURE, "ib108": R.REQUIREPTR, "ib212": R.SPAMDETECTED, "ib705": R.VIRUSDETECTED,
    "ib605": R.TOOMANYCONN, "ib007": R.TOOMANYCONN, "ib101": R.SPEEDING, "ib110": R.BLOCKED,
    "ib111": R.BLOCKED, "ib112": R.BLOCKED, "ib113": R.BLOCKED, "ib504": R.SPEEDING, "ib510": R.SPEEDING,
    "ib607": R.SPEEDING, "ib103": R.BADREPUTATION, "ib104": R.BLOCKED, "ib105": R.BLOCKED, "ib106": R.BLOCKED,
}

# Spectrum / Charter: AUP#I (incoming) or AUP#O (outgoing) and four digits, in ranges.
# https://www.spectrumbusiness.net/support/internet/understanding-email-error-codes
_SPECTRUM_LABEL = re.compile(r"aup#[a-z]*[-_ ]?([0-9]{4})")
_SPECTRUM_RANGES: tuple[tuple[int, int, Reason], ...] = (
    (1000, 1000, R.BLOCKED), (1010, 1010, R.REJECTED), (1020, 1080, R.REJECTED), (1090, 1090, R.SYSTEMERROR),
    (1100, 1150, R.REQUIREPTR), (1160, 1190, R.POLICYVIOLATION), (1200, 1250, R.BLOCKED),
    (1260, 1260, R.NETWORKERROR), (1300, 1340, R.TOOMANYCONN), (1350, 1490, R.SPEEDING),
    (1500, 1520, R.REJECTED), (1530, 1530, R.MESGTOOBIG), (1540, 1550, R.SPEEDING),
    (1560, 1560, R.POLICYVIOLATION), (1580, 1580, R.SPEEDING),
)

# Microsoft Exchange 5.5/2000/2003 IMS: "MSEXCH:IMS:org:site:server 0 (000C05A6) Unknown Recipient".
# https://support.microsoft.com/kb/Q191014 and Sisimai lhost/exchange2003.go
_EXCHANGE_LABEL = re.compile(r"msexch:\S+.{0,40}?\(([0-9a-f]{8})\)")
_EXCHANGE_CODES: dict[str, Reason] = {
    "000c05a6": R.USERUNKNOWN, "000c0595": R.FILTERED, "00010256": R.SYSTEMERROR, "000d06b5": R.SYSTEMERROR,
    "00120270": R.NETWORKERROR, "00050311": R.CONTENTERROR, "000502cc": R.CONTENTERROR, "000b0981": R.SECURITYERROR,
}


@dataclass(frozen=True)
class ServiceCatalogue:
    """Phrases one receiving service uses, trusted only for mail to or through its hosts."""

    name: str
    hosts: re.Pattern[str]
    phrases: tuple[tuple[Reason, re.Pattern[str]], ...]


def _catalogue(name: str, hosts: str, *entries: tuple[Reason, str]) -> ServiceCatalogue:
    return ServiceCatalogue(name, re.compile(hosts), tuple((reason, re.compile(p)) for reason, p in entries))


SERVICES: tuple[ServiceCatalogue, ...] = (
    # AOL: only its resolver errors are specific
    _catalogue("aol", r"(?:^|\.)(?:mail|mx)\.aol\.com$|(?:^|\.)aol\.com$",
               (R.HOSTUNKNOWN, r"host or domain name not found"),
               (R.NOTACCEPT, r"type=mx: malformed or unexpected name server reply")),
    # Cloudflare Email Routing, https://developers.cloudflare.com/email-routing/postmaster/
    _catalogue("cloudflare", r"(?:^|\.)mx\.cloudflare\.net$",
               (R.BLOCKED, r"found on one or more dnsbls"), (R.SYSTEMERROR, r"upstream error")),
    # GoDaddy phrases without an IB label
    _catalogue("godaddy", r"secureserver\.net$",
               (R.BLOCKED, r"rbl reject|spamhaus\.org/query/bl\?ip="),
               (R.EXPIRED, r"has been in the queue too long|delivery timeout"),
               (R.MAILBOXFULL, r"account storage limit"),
               (R.SPAMDETECTED, r"message rejected for spam or virus content"),
               (R.SUSPEND, r"account disabled"), (R.SYSTEMERROR, r"message is looping"),
               (R.USERUNKNOWN, r"recipient not found|account does not exist")),
    # Symantec/Broadcom Email Security.cloud, https://knowledge.broadcom.com/external/article/169652
    _catalogue("messagelabs", r"(?:^|\.)messagelabs\.com$",
               (R.AUTHFAILURE, r"domain authentication fail"),
               (R.BADREPUTATION, r"connection rejected by policy"),
               (R.BLOCKED, r"mail rejected because your ip is in the pbl|your ip address (?:\(\S+\) )?has been "),
               (R.REJECTED, r"sender envelope domain not allowed for sender ip address|your (?:domain|email address) has been (?:blocked|blacklisted)"
                            r"|your envelope sender is in my badmailfrom list"),
               (R.CONTENTERROR, r"stray linefeeds in message"),
               (R.FAILEDSTARTTLS, r"tls/sslv3 connection required"),
               (R.NORELAYING, r" as a relay, "),
               (R.NOTCOMPLIANTRFC, r"requested action aborted \[4\]|has detected that this message is not rfc 5322"),
               (R.SECURITYERROR, r"please turn on smtp authentication"),
               (R.SPAMDETECTED, r"message filtered|filtered by outbound scanning"),
               (R.TOOMANYCONN, r"too many recipients received this hour|too many messages"),
               (R.USERUNKNOWN, r"no such user|invalid recipient|mailbox is not allowed")),
    # KDDI au (ezweb), https://www.au.com/support/service/internet/trouble/mail/01/ : an empty
    # address before "User unknown" is its content filter, a quoted one the mailbox
    _catalogue("kddi", r"(?:^|\.)ezweb\.ne\.jp$|(?:^|\.)msmx\.au\.com$",
               (R.FILTERED, r"550 : user unknown"), (R.USERUNKNOWN, r">: user unknown")),
    # Mimecast, https://community.mimecast.com/s/article/email-security-cloud-gateway-mimecast-smtp-error-codes
    _catalogue("mimecast", r"(?:^|\.)mimecast\.com$",
               (R.AUTHFAILURE, r"(?:spf|dkim|dmarc) sender invalid - envelope rejected"),
               (R.BADREPUTATION, r"internal resources are temporarily unavailable|local ct ip reputation"),
               (R.BLOCKED, r"sender address blocked|recipient temporarily unavailable|ip temporarily blacklisted"),
               (R.FAILEDSTARTTLS, r"this route requires (?:encryption|tls version|high-strength ciphers)"),
               (R.MESGTOOBIG, r"maximum email size exceeded"),
               (R.NETWORKERROR, r"the incorrect hostname used for inbounds|mail loop detected"),
               (R.NORELAYING, r"open relay (?:is )?not allowed"),
               (R.NOTACCEPT, r"account inbounds disabled"),
               (R.POLICYVIOLATION, r"anti-spoofing policy|content examination policy|host network,? not allowed"),
               (R.REJECTED, r"envelope blocked|manually blocked senders|blocked senders - block policy|block policy for envelope from"),
               (R.SECURITYERROR, r"incorrect authentication data|submitter failed to"),
               (R.SYSTEMERROR, r"unable to process (?:connection|command|an email)|message ended early"),
               (R.TOOMANYCONN, r"account service is temporarily unavailable|exceeding outbound thread limit"),
               (R.VIRUSDETECTED, r"email rejected due to security policies")),
    # Outlook.com / Hotmail (Sisimai rhost/for-outlook.go)
    _catalogue("outlook", r"(?:^|\.)hotmail\.com$",
               (R.HOSTUNKNOWN, r"the mail could not be delivered to the recipient because the domain is not reachable"),
               (R.USERUNKNOWN, r"requested action not taken: mailbox unavailable")),
    # Tencent QQ Mail, https://service.mail.qq.com/detail/122
    _catalogue("tencent", r"(?:^|\.)qq\.com$",
               (R.AUTHFAILURE, r"(?:spf|dmarc) check failed"),
               (R.BLOCKED, r"suspected bounce attacks|suspected spam ip|connection denied"),
               (R.MESGTOOBIG, r"message too large"),
               (R.SPAMDETECTED, r"spam is embedded in the email|mail content denied"),
               (R.SPEEDING, r"mailbox unavailable or access denined|frequency of receiving messages is limited"),
               (R.SUSPEND, r"is a deactivated mailbox"),
               (R.SYNTAXERROR, r"bad address syntax"),
               (R.TOOMANYCONN, r"(?:ip|domain|sender|connection) frequency limited"),
               (R.REJECTED, r"suspected spam|mail is rejected by recipients"),
               (R.USERUNKNOWN, r"mailbox not found")),
    # Zoho Mail, https://www.zoho.com/mail/help/spam-reason.html
    _catalogue("zoho", r"(?:^|\.)zoho(?:mail)?\.(?:com|eu|in|jp)$",
               (R.AUTHFAILURE, r"email rejected per dmarc policy"),
               (R.BLOCKED, r"greylisted, try again after some time"),
               (R.REJECTED, r"email flagged as spam|mail rejected by destination domain"),
               (R.POLICYVIOLATION, r"email policy violation detected|mailbox delivery restricted by policy"),
               (R.SYSTEMERROR, r"temporary system error"),
               (R.USERUNKNOWN, r"user does not exist"),
               (R.VIRUSDETECTED, r" detected by zoho mail")),
)


def _by_label(text: str) -> tuple[Reason, str] | None:
    match = _FRANCE_LABEL.search(text.replace("-", "_"))
    if match and match.group(1) in _FRANCE_CODES:
        return _FRANCE_CODES[match.group(1)], "franceptt.code"
    match = _GODADDY_LABEL.search(text)
    if match and match.group(1) in _GODADDY_CODES:
        return _GODADDY_CODES[match.group(1)], "godaddy.code"
    match = _EXCHANGE_LABEL.search(text)
    if match and match.group(1) in _EXCHANGE_CODES:
        return _EXCHANGE_CODES[match.group(1)], "exchange.code"
    match = _SPECTRUM_LABEL.search(text)
    if match:
        number = int(match.group(1))
        for low, high, reason in _SPECTRUM_RANGES:
            if low <= number <= high:
                return reason, "spectrum.code"
    return None


def service_reason(text: str, hosts: tuple[str, ...]) -> tuple[Reason, str] | None:
    """The reason a receiving service's own label or catalogue phrase gives, with a rule id.

    `text` is the lower-cased diagnostic; `hosts` the remote host name and the recipient's domain.
    """
    found = _by_label(text)
    if found is not None:
        return found
    for service in SERVICES:
        if not any(service.hosts.search(host) for host in hosts if host):
            continue
        for reason, pattern in service.phrases:
            if pattern.search(text):
                return reason, f"{service.name}.phrase"
    return None
