"""Bounce policy as data: diagnostic phrases, RFC 3463 status codes and reply codes → reasons.

Nothing here decides; `mailer.classify` walks these tables in order and the first rule that
matches wins, so the order of `TEXT_RULES` is the policy. Provider rules come first (their
wording is specific and sometimes contradicts the status code they send), then generic
phrases, most specific reason first. Patterns are lower-case regular expressions searched in
the lower-cased, whitespace-collapsed reply text.

Much of the generic vocabulary follows the phrase lists of Sisimai (reason/why-*.go in
sisimai/go-sisimai, BSD 2-Clause, © azumakuniyuki and the sisimai development team), whose
reason names we use, and the providers' own published error catalogues cited per rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailer.reasons import Reason

# Commands sent before DATA: a refusal there cannot be about the message's content.
BEFORE_DATA = frozenset({"CONNECT", "HELO", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT"})


@dataclass(frozen=True)
class TextRule:
    """A phrase rule: when `pattern` occurs in the reply text, the reason is `reason`."""

    id: str
    reason: Reason
    pattern: re.Pattern[str]
    # the rule only applies to replies to these SMTP commands (empty: to any)
    commands: frozenset[str] = frozenset()
    # the rule only applies when the remote host name matches (None: any host)
    host: re.Pattern[str] | None = None


def _rule(
    rule_id: str,
    reason: Reason,
    *phrases: str,
    commands: frozenset[str] = frozenset(),
    host: str | None = None,
) -> TextRule:
    pattern = re.compile("|".join(f"(?:{p})" for p in phrases))
    return TextRule(rule_id, reason, pattern, commands, re.compile(host) if host else None)


R = Reason

# --- Providers: their own catalogues, checked before anything else ---------------------------
PROVIDER_RULES: tuple[TextRule, ...] = (
    # Gmail, https://support.google.com/a/answer/3726730 (SMTP error reference)
    _rule("gmail.user-unknown", R.USERUNKNOWN, r"the email account that you tried to reach does not exist"),
    _rule("gmail.disabled", R.SUSPEND, r"the email account that you tried to reach is (?:disabled|inactive)"),
    _rule("gmail.over-quota", R.MAILBOXFULL, r"the email account that you tried to reach is over quota",
          r"inbox is out of storage space"),
    _rule("gmail.ptr", R.REQUIREPTR, r"does not meet ipv6 sending guidelines regarding ptr records",
          r"the ip address sending this message does not have a ptr record",
          r"the corresponding forward dns entry does not point to the sending ip"),
    _rule("gmail.auth", R.AUTHFAILURE, r"this message does not have authentication information or fails to pass",
          r"is not accepted due to domain's dmarc policy", r"this message does not pass authentication checks"),
    _rule("gmail.reputation", R.BADREPUTATION,
          r"our system has detected an unusual rate of unsolicited mail originating from your ip",
          r"very low reputation of the sending (?:ip|domain)", r"this message has been blocked because of the (?:low )?reputation"),
    _rule("gmail.rate", R.SPEEDING, r"receiving mail at a rate that prevents additional messages",
          r"receiving mail too quickly", r"you have reached a limit for sending mail"),
    _rule("gmail.spam", R.SPAMDETECTED, r"our system has detected that this message is (?:likely )?(?:unsolicited|suspicious)"),
    _rule("gmail.unreachable", R.EXPIRED, r"the recipient server did not accept our requests to connect"),
    # Microsoft (Outlook.com, Office 365): https://learn.microsoft.com/exchange/mail-flow-best-practices/non-delivery-reports-in-exchange-online/non-delivery-reports-in-exchange-online
    _rule("microsoft.blocklisted", R.BLOCKED, r"\bs3150\b", r"\bs3140\b", r"\bs3115\b", r"banned sending ip",
          r"part of their network is on our block list", r"not currently accepting mail from your ip",
          r"access denied, banned sender", r"client host rejected: was not authenticated"),
    _rule("microsoft.user-unknown", R.USERUNKNOWN, r"resolver\.adr\.recipient ?notfound",
          # Exchange's 5.1.351 relays the next hop's refusal of the recipient ("-> Unknown user")
          r"remote server returned unknown recipient",
          r"recipient not found by smtp address lookup", r"the email address you entered couldn't be found"),
    _rule("microsoft.size", R.EXCEEDLIMIT, r"resolver\.rst\.recipsizelimit"),
    _rule("microsoft.quota", R.MAILBOXFULL, r"resolver\.rst\.recipientmailboxfull", r"quotaexceeded"),
    # Yahoo / AOL, https://senders.yahooinc.com/smtp-error-codes/
    _rule("yahoo.reputation", R.BADREPUTATION, r"\[tss04\]"),
    _rule("yahoo.deferred", R.BLOCKED, r"\[ts0[1-4]\]", r"\[tss0[1-9]\]", r"\[tsu0[1-9]\]",
          r"temporarily deferred due to unexpected volume or user complaints",
          r"messages from \S+ temporarily deferred due to user complaints"),
    _rule("yahoo.user", R.USERUNKNOWN, r"dd this user doesn't have a \S+ account"),
    _rule("yahoo.disabled", R.SUSPEND, r"dd mailbox is disabled"),
    # Apple iCloud, https://support.apple.com/en-us/102322
    _rule("apple.blocked", R.BLOCKED, r"esmtp not accepting connections", r"\b(?:cs|hm)0[1-9]\b",
          host=r"(?:icloud|me|mac|apple)\.com"),
    # Japanese carriers: NTT docomo, au (KDDI, ezweb), SoftBank
    _rule("docomo.quota", R.MAILBOXFULL, r"too much mail data"),
    _rule("jp.refused", R.FILTERED, r"recipient id refuse to receive mail", r"user refuses to receive this mail",
          r"the user .{0,40}has restricted"),
    # RFC 7505: a "null MX" says the domain accepts no mail at all, whatever DNS error surrounds it
    _rule("rfc7505.null-mx", R.NOTACCEPT, r"\bnull mx\b"),
    # Google Groups answers every refused post with its own notice, in the poster's language
    _rule("googlegroups.post", R.REJECTED, r"", host=r"(?:^|\.)googlegroups\.com$"),
    # The sending IP's reputation, in anyone's words: always the sender's problem, even when
    # the same reply also mentions the user (so it must win over every "user unknown" phrase).
    _rule("ip.reputation", R.BADREPUTATION, r"(?:ip|sender|domain) reputation", r"poor reputation", r"bad reputation",
          r"low reputation", r"reputation (?:is too low|of (?:your|the sending))"),
    _rule("ip.blocked", R.BLOCKED, r"\bip\b(?: address)?.{0,60}(?:blocked|blacklisted|blocklisted|banned|denylisted)",
          r"(?:blocked|blacklisted|blocklisted|banned) (?:ip|sending ip|client ip)"),
    # DNS block lists: Spamhaus, SpamCop, Barracuda, SORBS, abuseat (CBL)
    _rule("rbl.listed", R.BLOCKED, r"blocked using ", r"spamhaus", r"spamcop\.net", r"barracudacentral",
          r"abuseat\.org", r"\bdnsbl\b", r"is listed (?:in|on|at) ", r"listed in the rbl", r"\brbl\b",
          r"blacklisted by", r"is in a black list", r"rejected - multi-blacklist"),
)

# --- Generic phrases, one rule per reason -----------------------------------------------------
PHRASES: dict[Reason, TextRule] = {rule.reason: rule for rule in (
    _rule("phrase.mailboxfull", R.MAILBOXFULL, r"mailbox (?:is )?full", r"mailbox.{0,30}exceed.{0,30}limit",
          r"full mailbox", r"over ?quota", r"quota (?:has been )?exceeded", r"exceeded (?:storage allocation|quota|its quota|the quota)",
          r"(?:disk|mailbox|maildir) quota", r"quota violation",
          r"enough .{0,20}space", r"no space left on device", r"mailbox size limit", r"mailbox exceeds allowed size",
          r"mailfolder is full", r"inbox is full", r"user has too many messages", r"space has been used up",
          r"boite du destinataire pleine", r"account is .{0,30}quota", r"exceeding receiving limits",
          r"would exceed maximum allowed storage"),
    _rule("phrase.mesgtoobig", R.MESGTOOBIG, r"message (?:is |file )?too (?:big|large)", r"message size exceeds",
          r"exceeded (?:the )?maximum (?:inbound|incoming) message size", r"max(?:imum)? message size exceeded",
          r"size limit", r"line limit exceeded", r"taille limite du message"),
    _rule("phrase.exceedlimit", R.EXCEEDLIMIT, r"message length exceeds administrative limit", r"recipsizelimit"),
    _rule("phrase.suspend", R.SUSPEND, r" is currently suspended", r"temporary locked", r"archived recipient",
          r"boite du destinataire archivee", r"has been (?:suspended|disabled)", r"inactive account", r"invalid/inactive user",
          r"deactivated mailbox", r"user is terminated", r"mailbox (?:currently )?(?:suspended|disabled|is frozen)",
          r"temporarily inactive", r"recipient suspend", r"this mailbox is disabled", r"user or domain is disabled",
          r"user suspended", r"account is locked", r"account (?:is )?(?:disabled|suspended|deactivated)",
          r"this address no longer accepts mail"),
    _rule("phrase.hasmoved", R.HASMOVED, r"has been moved", r"mailbox has moved", r"address has changed", r"no longer with"),
    _rule("phrase.norelaying", R.NORELAYING, r"relay(?:ing)? (?:access )?(?:denied|not permitted|prohibited|not allowed|refused)",
          r"not (?:permitted|allowed|authorized) to relay", r"unable to relay", r"cannot relay", r"we do not relay",
          r"relay not permitted", r"insecure mail relay", r"relaying to .{1,80} (?:denied|prohibited)"),
    _rule("phrase.authfailure", R.AUTHFAILURE, r"\bspf\b.{0,40}(?:fail|invalid|check|reject)", r"(?:fail|reject).{0,40}\bspf\b",
          r"\bdkim\b.{0,40}(?:fail|invalid|signature|reject)", r"\bdmarc\b", r"bad spf", r"sender policy framework",
          r"authentication checks? (?:failed|not passed)", r"domainkeys", r"sender id"),
    _rule("phrase.userunknown", R.USERUNKNOWN, r"user(?:name)? unknown", r"unknown (?:user|recipient|mailbox|local ?part|e-?mail address)",
          r"no such (?:user|mailbox|recipient|person|address)", r"invalid final delivery userid", r"(?:user|recipient|mailbox|address|account) (?:does not|doesn't|did not) exist",
          r"(?:user|recipient|mailbox|address) (?:not found|not exist|not known|invalid|unavailable)",
          r"invalid (?:recipient|mailbox|address)", r"bad (?:destination )?(?:recipient|mailbox|address)", r"non-?existent user",
          r"not a valid (?:mailbox|user|recipient)", r"is not a known user", r"no mailbox", r"mailbox not (?:present|found)",
          r"recipient address rejected(?:: (?:unknown|invalid|user|access denied)|\.)", r"recipient (?:not ok|unknown|not local|is not local|not accepted)",
          r"address (?:unknown|invalid|does not exist)", r"no account by that name", r"not a local address", r"badrcptto", r"validrcptto",
          r"no valid recipients", r"utilisateur inconnu", r"nessun utente", r"no existe (?:dicha|ese)", r"recipient not found",
          r"no one at this address", r"requested action not taken: mailbox unavailable", r"mailbox unavaiable",
          r"was not found in", r"address not present", r"user not active",
          r"no longer valid", r"not listed in (?:domino|the) directory", r"in name directory", r"mailbox is inactive",
          r"sorry, no mailbox here", r"this spectator does not exist", r"this user doesn't have an? .{1,80} account", r"not our customer", r"recipient refuses to accept"),
    _rule("phrase.filtered", R.FILTERED, r"account is protected by", r"is not accepting any mail", r"message filtered",
          r"message rejected due to user rules", r"not found recipient account", r"user refuses", r"user reject",
          r"refused due to recipient preferences", r"only accepting mail from specific", r"blocked by the recipient",
          r"has restricted sms e-mail", r"user not found"),
    _rule("phrase.requireptr", R.REQUIREPTR, r"ip name lookup failed", r"ptr record", r"reverse dns", r"cannot find your hostname",
          r"cannot resolve your address", r"dns ptr", r"unresolvable relay host name", r"reverse lookup rejected",
          r"generic dns ptr", r"mismatches client ip", r"invalid rdns", r"unverifyable sending ips", r"rdns"),
    _rule("phrase.notcompliantrfc", R.NOTCOMPLIANTRFC, r"not compliant with rfc", r"rfc ?5322", r"rfc ?2822",
          r"duplicate (?:header|from|date|subject|message-id)", r"multiple (?:from|date|subject|sender|message-id)",
          r"bare (?:lf|cr)", r"multiple addresses in from", r"not rfc compliant", r"violates rfc"),
    _rule("phrase.badreputation", R.BADREPUTATION, r"ip reputation", r"poor reputation", r"bad reputation",
          r"low reputation", r"reputation (?:is|of)", r"sender reputation", r"domain reputation"),
    _rule("phrase.contenterror", R.CONTENTERROR, r"improper use of 8-bit data", r"message header size", r"header (?:size|line) (?:too long|exceeds)",
          r"illegal characters? in header", r"mime (?:error|syntax)"),
    _rule("phrase.rejected", R.REJECTED, r"sender (?:address )?(?:rejected|refused|denied|blacklisted|verify failed|is spammer)",
          r"sender email address rejected", r"invalid sender", r"bogus mail from", r"domain of sender address", r"sender domain (?:is empty|must exist)",
          r"empty envelope senders", r"null sender", r"returned mail not accepted", r"batv", r"unroutable sender",
          r"sender not pre-approved", r"list of senders to accept mail from", r"not allowed to post", r"backscatter",
          r"address has been blacklisted", r"sender was rejected", r"not owned by user", r"purported responsible address",
          r"administrative prohibition", r"envelope blocked", r"recipient addresses rejected : access denied", r"sender is in my black list", r"this server does not accept mail from",
          r"(?<!recipient )(?<!ip )address rejected", r"mx records for ", r"sending to/from an address that has been blacklisted", r"emetteur invalide",
          r"you are not allowed to post", r"fully qualified email address required", r"not a registered gateway user"),
    _rule("phrase.hostunknown", R.HOSTUNKNOWN, r"domain (?:does not|doesn't) exist", r"domain is not reachable", r"domain must exist",
          r"host or domain name not found", r"host unknown", r"host unreachable", r"mail domain mentioned in email address is unknown",
          r"name or service not known", r"no such domain", r"unknown domain", r"the account or domain may not exist",
          r"unknown host", r"unrout(?:e)?able address", r"553 \S+ does not exist"),
    _rule("phrase.spamdetected", R.SPAMDETECTED, r" - spam", r"appears to be (?:unsolicited|spam)", r"block(?:ed)? for spam",
          r"spamassassin", r"detected as spam", r"considered (?:as )?(?:unsolicited|spam)", r"content filter rejection",
          r"high probability of (?:being )?spam", r"classified as spam", r"spam (?:message|email|content|score|check|blocked|detected|refused|rejection|not accepted)",
          r"message content rejected", r"looks? like spam", r"rejected as spam", r"unacceptable content", r"suspected spam",
          r"probable spam", r"bulk (?:e-?mail|advertising|mail)", r"banned content", r"rejecting mail content", r"spam-like",
          r"spamprofiler", r"identified as spam", r"scored as spam", r"spam complaints", r"too much spam", r"uribl",
          r"spam points", r"antispam", r"anti-spam", r"is spam", r"mail content denied", r"may consider spam"),
    _rule("phrase.speeding", R.SPEEDING, r"(?<!connection )rate limit", r"too fast", r"sending rate", r"too many (?:messages|emails|mails)",
          r"throttl", r"slow down", r"message rate", r"sending quota"),
    _rule("phrase.toomanyconn", R.TOOMANYCONN, r"too many (?:concurrent |simultaneous )?connections", r"connection limit",
          r"too many (?:sessions|hosts|recipients)", r"connection rate limit", r"frequency limited", r"too many connections? from", r"max(?:imum)? (?:number of )?connections"),
    _rule("phrase.blocked", R.BLOCKED, r"client host .{0,60}(?:rejected|blocked|refused)", r"(?:your|sender|the) ip .{0,60}(?:blocked|rejected|refused|banned|blacklisted)",
          r"ip address .{0,40}(?:blocked|rejected|refused|banned)", r"access from ip address", r"connection (?:refused|dropped|reset)",
          r"not allowed to connect", r"go away", r"helo command rejected", r"please use the smtp server of your isp",
          r"not accepting (?:mail|connections) from", r"refused to talk to me", r"service not available, closing transmission channel",
          r"your server requires confirmation", r"confirm this mail server", r"hosts with dynamic ip", r"dynamic ips",
          r"invalid ip for sending", r"not allowed to send mail from", r"was blocked by", r"currently sending spam",
          r"you are sending spam", r"no access from mail server", r"host network not allowed", r"rejecting open proxy",
          r"mail server at .{0,60} is blocked", r"server access forbidden by your ip", r"too many spams from your ip",
          r"looks suspiciously like spammer", r"error from remote mail server after initial connection", r"blacklisted",
          r"blocked - see", r"refused - see", r"listed as abusive"),
    _rule("phrase.virusdetected", R.VIRUSDETECTED, r"virus", r"malware", r"infected", r"banned attachment",
          r"executable (?:attachment|content|file)"),
    _rule("phrase.policyviolation", R.POLICYVIOLATION, r"illegal attachment", r"not accepting mail with ",
          r"members-only list", r"closed mailing list", r"denied by policy", r"(?:not accepted|rejected) for policy reasons",
          r"rejected due to (?:security|local) polic", r"header are not accepted", r"header error", r"local policy violation",
          r"organizational settings", r"message given low priority", r"messages with multiple addresses", r"protocol violation",
          r"not subscribed to this group", r"rejected by organization policy", r"content presents a potential",
          r"images or other attachments", r"mass mailer", r"policy violation", r"violates .{0,30}polic"),
    _rule("phrase.systemerror", R.SYSTEMERROR, r"forwarding loop broken", r"can't create user output file", r"could not load drd",
          r"internal error reading data", r"internal server error", r"interrupted system call",
          r"error while being processed", r"would create a mail loop", r"local configuration error", r"local error in processing",
          r"loop was found", r"loops back to myself", r"configuration error", r"queue file write error", r"no mdb",
          r"misconfigured", r"service currently unavailable", r"system config error", r"temporary local problem",
          r"timeout waiting for input", r"transaction failed ", r"unable to connect .{0,40}daemon", r"system error"),
    _rule("phrase.networkerror", R.NETWORKERROR, r"could not connect and send the mail", r"dns records for the destination computer could not be found",
          r"hop count exceeded", r"host is unreachable", r"host name lookup failure", r"host not found, try again",
          r"mail forwarding loop", r"malformed (?:or unexpected )?name server reply", r"forwarding loop count exceeded",
          r"message looping", r"network error", r"dns error", r"dns query failed", r"routing loop", r"no route to host", r"too many hops", r"unable to resolve route", r"unrouteable mail domain"),
    _rule("phrase.systemfull", R.SYSTEMFULL, r"mail system full", r"system (?:disk )?(?:is )?full", r"requested mail action aborted: exceeded storage",
          r"insufficient system storage", r"file system full",
          r"insufficient disk space", r"not sufficient disk space"),
    _rule("phrase.notaccept", R.NOTACCEPT, r"null mx", r"no mx found", r"does not accept mail", r"not accepting (?:any )?(?:network )?(?:mail|messages)",
          r"accepts no mail", r"host does not accept", r"mail is not accepted"),
    _rule("phrase.expired", R.EXPIRED, r"connection timed out", r"could not find a gateway for", r"delivery attempts will continue",
          r"delivery (?:time )?expired", r"failed to deliver to domain ", r"giving up", r"have been failing for a long time",
          r"has been delayed", r"not been collected after", r"message expired", r"message timed out", r"retry time not reached",
          r"retry timeout exceeded", r"server did not respond", r"in the queue too long", r"unable to deliver message after multiple retries",
          r"not reachable within the allowed queue period", r"could not be delivered for", r"still undelivered after", r"will keep trying", r"too long in queue",
          r"delivery period expired", r"socket error"),
    _rule("phrase.failedstarttls", R.FAILEDSTARTTLS, r"starttls", r"support tls", r"tls (?:is )?required", r"requires? (?:a )?(?:secure|tls|encrypted) connection",
          r"tls negotiation fail", r"must issue a starttls"),
    _rule("phrase.securityerror", R.SECURITYERROR, r"account not subscribed to ses", r"authentication credentials invalid", r"authentication (?:failure|failed|required)",
          r"authentication turned on", r"executable files are not allowed", r"unauthenticated senders not allowed",
          r"verification failure", r"not authorized to send mail", r"is a dead domain", r"not authorized to perform ses",
          r"authentification (?:invalide|requise)", r"you don't authenticate"),
    _rule("phrase.suppressed", R.SUPPRESSED, r"suppression list", r"on the account-level suppression", r"address is suppressed"),
    _rule("phrase.mailererror", R.MAILERERROR, r"x-unix", r"mailer error", r"command (?:failed|died)", r"exit (?:code|status)",
          r"unknown mailer", r"procmail", r"pipe to \|", r"returned exit", r"command output", r"local delivery failed"),
    _rule("phrase.syntaxerror", R.SYNTAXERROR, r"syntax error", r"command unrecognized", r"unrecognized command",
          r"command not (?:recognized|implemented)", r"bad sequence of commands", r"malformed address"),
)}

# Sisimai's two passes (go-sisimai reason/lib.go "classorder"): the first trusts a status code
# that names the reason as much as the phrases; the second reads phrases only.
FIRST_PASS: tuple[Reason, ...] = (
    R.MAILBOXFULL, R.MESGTOOBIG, R.EXCEEDLIMIT, R.SUSPEND, R.HASMOVED, R.NORELAYING, R.AUTHFAILURE,
    R.USERUNKNOWN, R.FILTERED, R.REQUIREPTR, R.NOTCOMPLIANTRFC, R.BADREPUTATION, R.CONTENTERROR,
    R.REJECTED, R.HOSTUNKNOWN, R.SPAMDETECTED, R.SPEEDING, R.TOOMANYCONN, R.BLOCKED,
)
SECOND_PASS: tuple[Reason, ...] = (
    R.MAILBOXFULL, R.AUTHFAILURE, R.BADREPUTATION, R.SPEEDING, R.SPAMDETECTED, R.VIRUSDETECTED,
    R.POLICYVIOLATION, R.NORELAYING, R.SYSTEMERROR, R.NETWORKERROR, R.SUSPEND, R.CONTENTERROR,
    R.SYSTEMFULL, R.NOTACCEPT, R.EXPIRED, R.FAILEDSTARTTLS, R.SECURITYERROR, R.SUPPRESSED, R.MAILERERROR,
)

# RFC 3463 enhanced status codes → reason; the mapping follows Sisimai's smtp/status table
# (go-sisimai, Name()), which reads RFC 3463 section 3 and the IANA registry of later codes
# (RFC 4954, 5248, 7372, 7505, 8689).
STATUS_REASONS: dict[str, Reason] = {
    "4.1.6": R.HASMOVED, "4.1.7": R.REJECTED, "4.1.8": R.REJECTED, "4.1.9": R.SYSTEMERROR,
    "4.2.1": R.BLOCKED, "4.2.2": R.MAILBOXFULL, "4.2.3": R.EXCEEDLIMIT, "4.2.4": R.FILTERED,
    "4.3.1": R.SYSTEMFULL, "4.3.2": R.NOTACCEPT, "4.3.3": R.SYSTEMERROR, "4.3.5": R.SYSTEMERROR,
    "4.4.1": R.EXPIRED, "4.4.2": R.NETWORKERROR, "4.4.3": R.SYSTEMERROR, "4.4.4": R.NETWORKERROR,
    "4.4.5": R.SYSTEMFULL, "4.4.6": R.NETWORKERROR, "4.4.7": R.EXPIRED, "4.4.8": R.NETWORKERROR,
    "4.5.3": R.SYSTEMERROR, "4.5.5": R.SYSTEMERROR, "4.6.0": R.CONTENTERROR, "4.6.2": R.CONTENTERROR,
    "4.6.5": R.CONTENTERROR, "4.7.1": R.BLOCKED, "4.7.2": R.BLOCKED, "4.7.5": R.SECURITYERROR,
    "4.7.6": R.SECURITYERROR, "4.7.7": R.SECURITYERROR, "4.7.12": R.SECURITYERROR,
    "4.7.15": R.SECURITYERROR, "4.7.16": R.MESGTOOBIG, "4.7.24": R.AUTHFAILURE,
    "4.7.25": R.REQUIREPTR, "4.7.26": R.AUTHFAILURE,
    "5.1.0": R.USERUNKNOWN, "5.1.1": R.USERUNKNOWN, "5.1.2": R.HOSTUNKNOWN, "5.1.3": R.USERUNKNOWN,
    "5.1.4": R.FILTERED, "5.1.6": R.HASMOVED, "5.1.7": R.REJECTED, "5.1.8": R.REJECTED,
    "5.1.9": R.SYSTEMERROR, "5.1.10": R.NOTACCEPT, "5.2.0": R.FILTERED, "5.2.1": R.FILTERED,
    "5.2.2": R.MAILBOXFULL, "5.2.3": R.EXCEEDLIMIT, "5.2.4": R.FILTERED, "5.3.0": R.SYSTEMERROR,
    "5.3.1": R.SYSTEMFULL, "5.3.2": R.NOTACCEPT, "5.3.3": R.SYSTEMERROR, "5.3.4": R.MESGTOOBIG,
    "5.3.5": R.SYSTEMERROR, "5.4.0": R.NETWORKERROR, "5.4.3": R.SYSTEMERROR, "5.4.4": R.HOSTUNKNOWN,
    "5.5.2": R.SYNTAXERROR, "5.5.3": R.TOOMANYCONN, "5.5.4": R.SYSTEMERROR, "5.5.5": R.SYSTEMERROR,
    "5.5.6": R.SYNTAXERROR, "5.6.0": R.CONTENTERROR, "5.6.1": R.CONTENTERROR, "5.6.2": R.CONTENTERROR,
    "5.6.3": R.CONTENTERROR, "5.6.5": R.CONTENTERROR, "5.6.6": R.CONTENTERROR, "5.6.7": R.CONTENTERROR,
    "5.6.8": R.CONTENTERROR, "5.6.9": R.CONTENTERROR, "5.7.0": R.SECURITYERROR, "5.7.1": R.SECURITYERROR,
    "5.7.2": R.SECURITYERROR, "5.7.3": R.SECURITYERROR, "5.7.4": R.SECURITYERROR, "5.7.5": R.SECURITYERROR,
    "5.7.6": R.SECURITYERROR, "5.7.7": R.SECURITYERROR, "5.7.8": R.SECURITYERROR, "5.7.9": R.SECURITYERROR,
    "5.7.10": R.SECURITYERROR, "5.7.11": R.SECURITYERROR, "5.7.13": R.SUSPEND, "5.7.14": R.SECURITYERROR,
    "5.7.15": R.SECURITYERROR, "5.7.16": R.MESGTOOBIG, "5.7.17": R.HASMOVED, "5.7.18": R.HASMOVED,
    "5.7.19": R.SECURITYERROR, "5.7.20": R.AUTHFAILURE, "5.7.21": R.AUTHFAILURE, "5.7.22": R.AUTHFAILURE,
    "5.7.23": R.AUTHFAILURE, "5.7.24": R.AUTHFAILURE, "5.7.25": R.REQUIREPTR, "5.7.26": R.AUTHFAILURE,
    "5.7.27": R.NOTACCEPT, "5.7.28": R.SPAMDETECTED, "5.7.29": R.AUTHFAILURE, "5.7.30": R.FAILEDSTARTTLS,
}

# RFC 5321 4.2.2 / 4.2.3 basic reply codes, the last resort when neither the text nor an
# enhanced code speaks.
REPLY_CODE_REASONS: dict[int, Reason] = {
    421: R.BLOCKED,  # service not available, closing channel
    450: R.SYSTEMERROR,  # mailbox unavailable (busy or blocked)
    451: R.SYSTEMERROR,  # local error in processing
    452: R.MAILBOXFULL,  # insufficient system storage
    500: R.SYNTAXERROR,
    501: R.SYNTAXERROR,
    502: R.SYNTAXERROR,
    503: R.SYNTAXERROR,
    504: R.SYNTAXERROR,
    521: R.NOTACCEPT,  # RFC 7504: host does not accept mail
    550: R.USERUNKNOWN,  # mailbox unavailable
    551: R.HASMOVED,  # user not local (RFC 5321 3.4)
    552: R.MAILBOXFULL,  # exceeded storage allocation
    553: R.USERUNKNOWN,  # mailbox name not allowed
    554: R.SYSTEMERROR,  # transaction failed
    556: R.NOTACCEPT,  # RFC 7504: domain does not accept mail
}
