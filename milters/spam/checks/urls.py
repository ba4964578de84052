"""URL checks on the decoded body.

Phishing shows a link text naming one host and points the href at another
(Rspamd's phishing module compares the same pair). Two shapes are not
disguises and are left out: a link through the From domain's own host (the
newsletter's click tracker: the sender names itself as the link's owner, so
the reader is not misled about who sent it), and a link text that is not one
URL-like word ("www.example.o rg", text broken by the sender's HTML, names
no host at all);
IP-literal URLs (RFC 3986 section 3.2.2) and URL shorteners hide the real
target from the reader and from domain lists; many distinct domains in one
message is typical of link farms.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from milters.context import ServiceContext
from milters.spam.checks.api import Check, CheckContext, CheckSpec, SymbolDef, SymbolHit
from milters.spam.lists import AddressList
from milters.spam.view import MessageView, url_host
from postwarden.config.sections.spam import SpamMilterSettings

SYMBOLS = {
    "URL_TEXT_MISMATCH": SymbolDef(3.0, "link text names another host than its href"),
    "URL_IP_LITERAL": SymbolDef(2.0, "a URL with an IP address as host"),
    "URL_SHORTENER": SymbolDef(0.5, "a URL shortener hides the target"),
    "URL_MANY_DOMAINS": SymbolDef(1.0, "many distinct URL domains"),
}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _base(host: str) -> str:
    """Last two labels: enough to tell `www.bank.example` from `evil.example`."""
    return ".".join(host.split(".")[-2:])


def build(ctx: ServiceContext, settings: SpamMilterSettings) -> Check:
    shorteners = AddressList(settings.url_shorteners)
    many = settings.many_domains

    def url_checks(view: MessageView, cctx: CheckContext) -> Iterator[SymbolHit]:
        """Link text vs href, IP literals, shorteners, number of domains."""
        mismatch: list[str] = []
        literal: list[str] = []
        short: list[str] = []
        senders = {_base(a.rpartition("@")[2].lower()) for a in view.from_addresses}
        for u in view.urls:
            if u.in_html and u.text:
                text = u.text.strip()
                if text.lower().startswith(("http://", "https://", "www.")) and not any(
                    c.isspace() for c in text
                ):
                    shown = url_host(text)
                    target = _base(u.host)
                    if shown and "." in shown and _base(shown) != target and target not in senders:
                        mismatch.append(f"{shown}->{u.host}")
            if _is_ip(u.host):
                literal.append(u.host)
            elif shorteners.match(u.host):
                short.append(u.host)
        if mismatch:
            yield SymbolHit("URL_TEXT_MISMATCH", tuple(mismatch[:3]))
        if literal:
            yield SymbolHit("URL_IP_LITERAL", tuple(dict.fromkeys(literal))[:3])
        if short:
            yield SymbolHit("URL_SHORTENER", tuple(dict.fromkeys(short))[:3])
        domains = {_base(h) for h in view.url_hosts if not _is_ip(h)}
        if len(domains) >= many:
            yield SymbolHit("URL_MANY_DOMAINS", (str(len(domains)),))

    return url_checks


CHECK = CheckSpec(name="urls", build=build, symbols=SYMBOLS)
