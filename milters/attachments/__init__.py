"""The attachments milter: dangerous files found by content, inside archives too.

For each message the engine walks the MIME tree (`walk`), types every file
by its bytes (`filetype`), looks into zip/tar/gzip/bzip2/xz/rar archives
and TNEF winmail.dat files (`tnef`) to
`limits.archive_depth` (`archives`), puts each file into classes
(`classes`: executables, archives, macro_documents, encrypted_archives,
double_extensions, custom, ...) and, when enabled, has clamd scan it
(`clamd`). Each class has one action from the config (off, warn, strip,
quarantine, reject); the strongest one found decides:

- reject: `550 5.7.1` naming the file and the class (RFC 3463 5.7.1,
  "delivery not authorized, message refused");
- quarantine: Postfix HOLD (MILTER_README: SMFIR_QUARANTINE);
- strip: the offending MIME parts are replaced by a text/plain notice
  (`strip`, milter body replacement), the rest of the message intact;
- warn: nothing but the findings header and the log line.

Whenever something was found, a header (`header`, default
X-Postwarden-Attachments) lists the files, their detected types, classes
and actions; one `decision` log line per message names the same. A limit
(parts, nesting, decoded size, archive members, expansion ratio, archive
depth) that stops the walk is a finding of its own (`limits.action`,
default quarantine): the message is never passed unexamined, and a zip
bomb or a 1,000-level nested multipart ends in a verdict, not a crash.
Allow-lists (sender, all recipients' domains, file SHA-256) win over
every class and over clamd.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, fields

from milters.attachments import clamd
from milters.attachments.archives import ArchiveLimits, Listing, Member, list_archive
from milters.attachments.classes import Hit, classify
from milters.attachments.filetype import READABLE_ARCHIVES, FileType, detect, sniff
from milters.attachments.strip import (
    Removal,
    rebuild,
    safe_name,
    whole_body_edits,
    whole_body_notice,
)
from milters.attachments.tnef import read_tnef
from milters.attachments.walk import Part, Span, Walker, WalkLimits
from milters.context import MessageContext, ServiceContext
from milters.engine import MilterSpec, Needs
from milters.message import Action, Envelope, HeaderEdit, HeaderOp, Message, Verdict
from postwarden import logs
from postwarden.config.sections.attachments import (
    AttachmentsMilterSettings,
    ClamavScan,
    ClassAction,
)
from postwarden.config.sections.common import OnError
from postwarden.replies import ATTACHMENT_REJECTED, SERVICE_UNAVAILABLE, VIRUS_REJECTED

log = logging.getLogger("postwarden.milter.attachments")

UNREAD = FileType("unread", "application/octet-stream", "packed member, not unpacked")
HEADER_LIMIT = 900  # characters of the findings header before "..."


@dataclass
class FileReport:
    """One file as the verdict, the header and `scan --json` show it."""

    path: str
    name: str
    declared: str
    ftype: FileType
    size: int
    span: Span
    inside: str = ""  # the enclosing archives, "a.zip/b.zip"
    hits: list[Hit] = field(default_factory=list)
    members: int = 0

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "path": self.path,
            "name": self.name,
            "declared": self.declared,
            "type": self.ftype.mime,
            "kind": self.ftype.kind,
            "size": self.size,
            "classes": [h.cls for h in self.hits],
        }
        if self.inside:
            out["inside"] = self.inside
        if self.members:
            out["members"] = self.members
        return out


@dataclass(frozen=True, slots=True)
class Finding:
    """A class hit with an action other than off (or a limit, or a virus)."""

    file: FileReport | None
    cls: str
    action: ClassAction
    why: str

    @property
    def label(self) -> str:
        return safe_name(self.file.name or self.file.path) if self.file else "message"

    def describe(self) -> str:
        if self.file is None:
            return f"{self.cls}={self.action.value} ({safe_name(self.why, 200)})"
        return f'"{self.label}" {self.file.ftype.mime} {self.cls}={self.action.value}'


@dataclass
class _Scan:
    """One message's state while the engine looks at it."""

    walker: Walker
    files: list[FileReport] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)
    clamd_problem: str = ""


class AttachmentsEngine:
    name = "attachments"

    def __init__(self, settings: AttachmentsMilterSettings) -> None:
        self.settings = settings
        self.needs = needs_for(settings)
        lim = settings.limits
        self.walk_limits = WalkLimits(
            lim.max_parts, lim.max_depth, int(lim.max_decoded_size), int(lim.max_total_size)
        )
        self.archive_limits = ArchiveLimits(
            lim.max_archive_members, lim.max_expansion_ratio, int(lim.max_member_size)
        )
        clamav = settings.clamav
        self.errors = logs.RateLimitedLog(log, interval=60.0)
        self.part_scan = clamav.enabled and clamav.scan is ClamavScan.PARTS
        self.whole_message_scan = clamav.enabled and clamav.scan is ClamavScan.MESSAGE
        self.allowed_hashes = frozenset(h.lower() for h in settings.allow.sha256)
        self.allowed_senders = frozenset(a.lower() for a in settings.allow.senders)
        self.allowed_domains = frozenset(
            d.lower().lstrip("@") for d in settings.allow.recipient_domains
        )

    # -- the decision -------------------------------------------------------
    def evaluate(self, msg: Message, env: Envelope, ctx: MessageContext) -> Verdict:
        """Walk, type, classify and (optionally) virus-scan every file."""
        allowed = self._envelope_allowed(env)
        if allowed:
            self._log(env, "accept", [], [], allowed)
            return Verdict(reason=allowed, details={"allowed": allowed})
        scan = _Scan(Walker(self.walk_limits, ctx.budget))
        if self.whole_message_scan and self._clamd(msg.as_bytes(), None, "message", scan, ctx):
            return self._clamd_tempfail(scan)
        for part in scan.walker.walk(msg.header_bytes(), msg.body):
            if part.is_text_body and not sniff(part.data[:1024]):
                # The message text, unless it is really a program.
                html = self.part_scan and part.declared_type == "text/html"
                if html and self._clamd(part.data, None, part.path, scan, ctx):
                    return self._clamd_tempfail(scan)
                continue
            if self._file(part, scan, ctx):
                return self._clamd_tempfail(scan)
        for hit in scan.walker.limit_hits:
            scan.findings.append(
                Finding(None, hit.limit, self.settings.limits.action, f"{hit.where}: {hit.detail}")
            )
        return self._verdict(msg, env, scan)

    def _envelope_allowed(self, env: Envelope) -> str:
        if self.allowed_senders and env.mail_from:
            sender = env.mail_from.lower()
            if sender in self.allowed_senders or f"@{env.sender_domain}" in self.allowed_senders:
                return f"sender {env.mail_from} allow-listed"
        if self.allowed_domains and env.recipients:
            domains = {r.rpartition("@")[2].lower() for r in env.recipients}
            if domains <= self.allowed_domains:
                return "every recipient domain allow-listed"
        return ""

    def _file(self, part: Part, scan: _Scan, ctx: MessageContext) -> bool:
        """One MIME file and everything inside it; True when clamd failed
        and on_error says tempfail."""
        stack: list[tuple[str, str, bytes, str, int, str, bool]] = [
            (part.name, part.declared_type, part.data, part.path, 0, "", False)
        ]
        top = True
        while stack:
            ctx.budget.check("attachments: files")
            name, declared, data, path, level, inside, unread = stack.pop()
            if not top and not scan.walker.count_part(path):
                return False
            if self.allowed_hashes:
                digest = hashlib.sha256(data).hexdigest()
                if digest in self.allowed_hashes:
                    scan.allowed.append(f"{safe_name(name or path)} sha256 allow-listed")
                    top = False
                    continue
            # A member we could not unpack (compressed RAR) is known by name only.
            ftype = UNREAD if unread else detect(data)
            report = FileReport(path, name, declared, ftype, len(data), part.span, inside)
            listing = self._listing(data, ftype, name or path, scan)
            report.hits = classify(name, declared, ftype, listing, data, self.settings)
            scan.files.append(report)
            for hit in report.hits:
                action = getattr(self.settings.classes, hit.cls)
                if action is not ClassAction.OFF:
                    scan.findings.append(Finding(report, hit.cls, action, hit.why))
            if top and self.part_scan and self._clamd(data, report, path, scan, ctx):
                return True
            top = False
            if listing is None or listing.container not in ("archive", "tnef"):
                continue
            report.members = len(listing.names)
            if not listing.members:
                continue
            here = f"{inside}/{name or path}" if inside else (name or path)
            if level >= self.settings.limits.archive_depth:
                scan.walker.hit("archive_depth", here, "archives nested deeper than the limit")
                continue
            for member in reversed(listing.members):
                if not member.encrypted:
                    mpath = f"{path}/{member.name}"
                    entry = (member.name, "", member.data, mpath, level + 1, here, member.unread)
                    stack.append(entry)
        return False

    def _listing(self, data: bytes, ftype: FileType, name: str, scan: _Scan) -> Listing | None:
        # A zip is always opened far enough to tell a docx from a docm from an
        # archive; other archives only when looking into archives is on.
        if ftype.kind == "tnef":
            return self._tnef(data, name, scan)
        if ftype.kind not in READABLE_ARCHIVES:
            return None
        if ftype.kind != "zip" and not self.settings.look_into_archives:
            return None
        walker = scan.walker
        listing = list_archive(data, ftype.kind, name, self.archive_limits, walker, walker.budget)
        for limit, detail in listing.limit_hits:
            walker.hit(limit, name, detail)
        if not self.settings.look_into_archives:
            listing.members = [m for m in listing.members if m.encrypted]
        return listing

    def _tnef(self, data: bytes, name: str, scan: _Scan) -> Listing:
        """winmail.dat: its attachments become members, like an archive's."""
        lim = self.archive_limits
        walker = scan.walker
        contents = read_tnef(data, lim.max_members, min(lim.max_member_size, walker.remaining()))
        listing = Listing("tnef", container="tnef")
        if contents.too_many:
            walker.hit("max_archive_members", name, f"more than {lim.max_members} attachments")
        for att in contents.attachments:
            if att.truncated:
                walker.hit("max_member_size", f"{name}/{att.name}", f"{att.size} bytes")
            walker.used(len(att.data))
            listing.names.append(att.name)
            listing.members.append(Member(att.name, att.data, att.size, truncated=att.truncated))
        return listing

    def _clamd(
        self,
        data: bytes,
        report: FileReport | None,
        path: str,
        scan: _Scan,
        ctx: MessageContext,
    ) -> bool:
        c = self.settings.clamav
        try:
            result = clamd.instream(
                c.socket,
                data,
                timeout=ctx.budget.cap(float(c.timeout)),
                max_size=int(c.max_scan_size),
            )
        except clamd.ClamdError as exc:
            ctx.stats.add("milter.attachments.error.clamd")
            scan.clamd_problem = str(exc)
            on_error = self.settings.on_error.value
            self.errors.warning(
                "clamd", "attachments: clamd unavailable: %s; on_error=%s", exc, on_error
            )
            return self.settings.on_error is OnError.TEMPFAIL
        if result.virus and c.action is not ClassAction.OFF:
            scan.findings.append(Finding(report, "virus", c.action, f"{result.virus} in {path}"))
        return False

    def _clamd_tempfail(self, scan: _Scan) -> Verdict:
        reason = f"clamd unavailable: {scan.clamd_problem}; on_error=tempfail"
        return Verdict(Action.TEMPFAIL, reason=reason, reply=SERVICE_UNAVAILABLE)

    # -- the verdict ----------------------------------------------------------
    def _verdict(self, msg: Message, env: Envelope, scan: _Scan) -> Verdict:
        s = self.settings
        findings = scan.findings
        details: dict[str, object] = {
            "files": [f.as_dict() for f in scan.files],
            "findings": [
                {"file": f.label, "class": f.cls, "action": f.action.value, "why": f.why}
                for f in findings
            ],
        }
        if scan.allowed:
            details["allowed"] = scan.allowed
        if scan.clamd_problem:
            details["clamd"] = f"unavailable: {scan.clamd_problem}; on_error=accept"
        strongest = max((f.action for f in findings), key=lambda a: a.severity, default=None)
        edits: list[HeaderEdit] = []
        if findings and s.header:
            edits.append(HeaderEdit(HeaderOp.ADD, s.header, _header_value(findings)))
        action = strongest.value if strongest else "accept"
        self._log(env, action, scan.files, findings, "")
        if strongest is None:
            return Verdict(reason="no findings", details=details)
        # A virus names itself first; otherwise the first finding in the message.
        first = min((f for f in findings if f.action is strongest), key=lambda f: f.cls != "virus")
        reason = f"{strongest.value}: {first.describe()}: {first.why}"
        if strongest is ClassAction.REJECT:
            base = VIRUS_REJECTED if first.cls == "virus" else ATTACHMENT_REJECTED
            text = (
                f'Attachment "{first.label}" refused: {first.cls}'
                if first.file
                else f"Message refused: {first.cls} ({safe_name(first.why, 200)})"
            )
            if first.cls == "virus":
                text = (
                    f'Virus found in "{first.label}": {safe_name(first.why.split(" in ")[0], 100)}'
                )
            return Verdict(
                Action.REJECT,
                reason=reason,
                reply=base.with_text(_reply_text(text)),
                header_edits=tuple(edits),
                details=details,
            )
        if strongest is ClassAction.STRIP and msg.truncated:
            # Replacing a body we only kept part of would lose the rest.
            reason = f"quarantine: body over max_body_size, cannot strip; {reason}"
            strongest = ClassAction.QUARANTINE
        if strongest is ClassAction.QUARANTINE:
            return Verdict(
                Action.QUARANTINE, reason=reason, header_edits=tuple(edits), details=details
            )
        if strongest is ClassAction.STRIP:
            new_body, more = _stripped(msg, findings)
            details["stripped"] = [f.label for f in findings if f.action is ClassAction.STRIP]
            return Verdict(
                Action.ADD_HEADER,
                reason=reason,
                header_edits=(*more, *edits),
                new_body=new_body,
                details=details,
            )
        return Verdict(Action.ADD_HEADER, reason=reason, header_edits=tuple(edits), details=details)

    def _log(
        self,
        env: Envelope,
        action: str,
        files: list[FileReport],
        findings: list[Finding],
        allowed: str,
    ) -> None:
        logs.decision(
            log,
            {
                "service": "attachments",
                "queue": env.queue_id,
                "action": action,
                "files": [safe_name(f.name or f.path, 60) for f in files],
                "types": [f.ftype.mime for f in files],
                "classes": sorted({f.cls for f in findings}),
                "allowed": allowed,
            },
        )


def needs_for(settings: AttachmentsMilterSettings) -> Needs:
    """Ask Postfix only for the modifications the configured actions use.

    Negotiating body replacement (SMFIF_CHGBODY) when no class strips was
    measured to cost about a third of Postfix's throughput on small messages
    with a header added (bench/attachments.py: 0.92 of Postfix alone without
    it, 0.6 with it). Flags are negotiated when the milter starts: a reload
    that newly configures `strip` or `quarantine` is refused with a message
    asking for a restart (milters/service.py), never applied half.
    """
    actions = {getattr(settings.classes, f.name) for f in fields(settings.classes)}
    actions.add(settings.limits.action)
    if settings.clamav.enabled:
        actions.add(settings.clamav.action)
    strip = ClassAction.STRIP in actions
    return Needs(
        headers=True,
        body=True,
        add_headers=True,
        change_headers=strip,
        change_body=strip,
        # A strip of a body cut at max_body_size becomes a quarantine.
        quarantine=strip or ClassAction.QUARANTINE in actions,
    )


def _stripped(msg: Message, findings: list[Finding]) -> tuple[bytes, tuple[HeaderEdit, ...]]:
    """The new body (and header edits when the message itself was the file)."""
    removals: list[Removal] = []
    for f in findings:
        if f.action is not ClassAction.STRIP or f.file is None:
            continue
        notice = (
            f'postwarden removed the attachment "{f.label}" '
            f"({f.file.ftype.mime}): {f.cls}, {safe_name(f.why, 80)}"
        )
        if f.file.span.whole:
            present = [h.name.lower() for h in msg.headers]
            return whole_body_notice(notice), whole_body_edits(present)
        removals.append(Removal(f.file.span, notice))
    return rebuild(msg.body, removals), ()


def _header_value(findings: list[Finding]) -> str:
    seen: list[str] = []
    for f in findings:
        text = f.describe()
        if text not in seen:
            seen.append(text)
    value = "; ".join(seen)
    return value if len(value) <= HEADER_LIMIT else value[: HEADER_LIMIT - 3] + "..."


def _reply_text(text: str) -> str:
    return text[:300].replace("\r", " ").replace("\n", " ")


def iter_findings(verdict: Verdict) -> Iterator[dict[str, object]]:
    """The findings a verdict carries (for tests and tools)."""
    found = verdict.details.get("findings", [])
    if isinstance(found, list):
        yield from found


def build(ctx: ServiceContext) -> AttachmentsEngine | None:
    s = ctx.settings.milters.attachments
    return AttachmentsEngine(s) if s.enabled else None


MILTER = MilterSpec(
    name="attachments",
    build=build,
    position=20,
    description="dangerous files by content, inside archives too; reject, strip, quarantine",
)
