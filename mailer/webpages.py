"""The pages recipients see on the tracking server, in English and Japanese.

Small, self-contained HTML: no scripts, no external resources, inline style only (the
server's Content-Security-Policy allows nothing else). Every value is escaped here, so a list
title or an address from a form cannot inject markup.
"""

from __future__ import annotations

import re
from html import escape

LANGUAGES = ("en", "ja")

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "unsubscribe.title": "Unsubscribe",
        "unsubscribe.lead": "Choose what you no longer want to receive:",
        "unsubscribe.list": "Only “{list}”",
        "unsubscribe.all": "Everything we send to this address",
        "unsubscribe.button": "Unsubscribe",
        "unsubscribed.title": "You are unsubscribed",
        "unsubscribed.list": "You will receive no more emails from “{list}”.",
        "unsubscribed.all": "You will receive no more emails from us.",
        "subscribe.pending.title": "Check your inbox",
        "subscribe.pending": "We sent a confirmation link to {email} for “{list}”. Follow it to finish subscribing.",
        "subscribe.done.title": "You are subscribed",
        "subscribe.done": "{email} is subscribed to “{list}”.",
        "confirm.ask.title": "Confirm your subscription",
        "confirm.ask": "Press the button to confirm your subscription to “{list}”.",
        "confirm.button": "Confirm",
        "confirmed.title": "Subscription confirmed",
        "confirmed": "Thank you: your subscription to “{list}” is confirmed.",
        "expired.title": "This link has expired",
        "expired": "This link has expired or is not valid. Subscribe again to receive a new one.",
        "notfound.title": "Not found",
        "notfound": "This link is not valid.",
        "error.title": "Something is missing",
        "ratelimited": "Too many requests from your address. Please try again later.",
    },
    "ja": {
        "unsubscribe.title": "配信停止",
        "unsubscribe.lead": "受け取りを停止する内容を選んでください。",
        "unsubscribe.list": "「{list}」のみ",
        "unsubscribe.all": "このアドレスへのすべてのメール",
        "unsubscribe.button": "配信を停止する",
        "unsubscribed.title": "配信を停止しました",
        "unsubscribed.list": "「{list}」のメールは今後届きません。",
        "unsubscribed.all": "今後、当社からのメールは届きません。",
        "subscribe.pending.title": "メールをご確認ください",
        "subscribe.pending": "「{list}」の確認リンクを {email} に送信しました。リンクを開くと登録が完了します。",
        "subscribe.done.title": "登録が完了しました",
        "subscribe.done": "{email} を「{list}」に登録しました。",
        "confirm.ask.title": "登録の確認",
        "confirm.ask": "ボタンを押して「{list}」への登録を確定してください。",
        "confirm.button": "登録を確定する",
        "confirmed.title": "登録を確認しました",
        "confirmed": "ありがとうございます。「{list}」への登録が確定しました。",
        "expired.title": "このリンクは期限切れです",
        "expired": "このリンクは有効期限が切れているか、無効です。もう一度ご登録いただくと新しいリンクをお送りします。",
        "notfound.title": "見つかりません",
        "notfound": "このリンクは無効です。",
        "error.title": "入力に不足があります",
        "ratelimited": "リクエストが多すぎます。しばらくしてからもう一度お試しください。",
    },
}

_STYLE = (
    "body{font-family:system-ui,-apple-system,'Hiragino Sans','Noto Sans JP',sans-serif;"
    "max-width:32rem;margin:3rem auto;padding:0 1rem;color:#222;line-height:1.6}"
    "h1{font-size:1.4rem}label{display:block;margin:.5rem 0}"
    "button{font-size:1rem;padding:.5rem 1.2rem;margin-top:1rem}"
)


def language(accept_language: str, override: str = "") -> str:
    """"ja" when asked for (`?lang=ja`) or when the browser prefers Japanese, else "en"."""
    if override in LANGUAGES:
        return override
    return "ja" if prefers_japanese(accept_language) else "en"


def prefers_japanese(accept_language: str) -> bool:
    """Whether the language the browser ranks highest (RFC 9110 12.5.4) is Japanese."""
    best_q, best = -1.0, ""
    for part in accept_language.split(",")[:20]:
        tag, _, params = part.strip().partition(";")
        q = 1.0
        match = re.search(r"q\s*=\s*([0-9.]{1,5})", params)
        if match:
            try:
                q = float(match.group(1))
            except ValueError:
                continue
        if q > best_q and tag.strip() and tag.strip() != "*":
            best_q, best = q, tag.strip().lower()
    return best_q > 0 and best.split("-")[0] == "ja"


def text(lang: str, key: str, **values: str) -> str:
    """A sentence in `lang`, its values escaped."""
    return escape(TEXTS[lang][key]).format(**{name: escape(value) for name, value in values.items()})


def page(lang: str, title_key: str, body: str) -> str:
    """A whole page; `body` must already be escaped HTML."""
    return (
        f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{text(lang, title_key)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{text(lang, title_key)}</h1>{body}</body></html>"
    )


def message_page(lang: str, title_key: str, key: str, **values: str) -> str:
    return page(lang, title_key, f"<p>{text(lang, key, **values)}</p>")


def unsubscribe_form(lang: str, *, action: str, list_title: str) -> str:
    """The choice of a GET /u/<token>: this list or everything, sent back by POST."""
    choices = ""
    if list_title:
        choices += (
            '<label><input type="radio" name="scope" value="list" checked> '
            f"{text(lang, 'unsubscribe.list', list=list_title)}</label>"
        )
    checked = "" if list_title else " checked"
    choices += f'<label><input type="radio" name="scope" value="all"{checked}> {text(lang, "unsubscribe.all")}</label>'
    return page(
        lang,
        "unsubscribe.title",
        f'<form method="post" action="{escape(action)}"><p>{text(lang, "unsubscribe.lead")}</p>{choices}'
        f'<input type="hidden" name="lang" value="{lang}">'
        f'<button type="submit">{text(lang, "unsubscribe.button")}</button></form>',
    )


def confirm_form(lang: str, *, action: str, list_title: str) -> str:
    """A confirm link opened by something that may be a machine: a person presses the button."""
    return page(
        lang,
        "confirm.ask.title",
        f'<form method="post" action="{escape(action)}"><p>{text(lang, "confirm.ask", list=list_title)}</p>'
        f'<input type="hidden" name="lang" value="{lang}">'
        f'<button type="submit">{text(lang, "confirm.button")}</button></form>',
    )


def error_page(lang: str, problem: str) -> str:
    return page(lang, "error.title", f"<p>{escape(problem)}</p>")


HONEYPOT_PAGE = "<!DOCTYPE html><title>OK</title><p>OK</p>"
