"""The attachments milter: corpus scan rate, and Postfix throughput with it.

Two parts, one run:

1. `scan`: every message of the shared corpus
   (../shared/corpus/spamassassin-public-2002.tar.gz, unpacked to a temp
   dir) through the content pipeline with only the attachments milter, as
   `postwarden scan` runs it; messages/s, with `parse` (Message.from_bytes
   and nothing else) as the baseline in the same run. The files found are
   listed with their detected types (`--list`), and the run fails if any
   message ended in an error or a timeout.
2. Postfix: messages/s through a private Postfix (tests/harness) for
   - `none`: Postfix alone;
   - `milter`: `smtpd_milters` -> `postwarden milter attachments`;
   - `milter_clamd`: the same with `clamav.enabled` and a private clamd
     (tests/harness/clamd.py, its own EICAR-only database).
   Each message carries a zip (a PDF and a docx inside) and a text part;
   `archives: warn` makes the milter stamp X-Postwarden-Attachments on
   every message it really looked at, and every delivered message is
   checked for it; with clamd, clamd's own log must show a clean scan per
   message. Rounds interleave the configurations (order rotated), ratios
   are to `none` of the same round; smtp-source sends the message file
   (`-F`), one connection per message. Reuses bench/throughput.py's
   summary and report. Run from the repository root, as root:

    .venv/bin/python -m bench.attachments [--messages 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.throughput import SMTP_SOURCE, Bench, RunResult, _log, report, run_rounds, summarize
from milters import pipeline
from milters.context import ServiceContext
from milters.message import Envelope, Message
from milters.pipeline import Runner
from postwarden.cli.scan import enabled_stages
from postwarden.config.load import load_config_text
from tests.fixtures.attachments import Attachment, docx, mime_message, zip_of
from tests.fixtures.corpus import unpack as unpack_corpus
from tests.harness.clamd import ClamdInstance
from tests.harness.postfix import PostfixInstance, PostfixOptions
from tests.harness.services import ServiceProcess, start_service, write_config

CONFIGS = ("none", "milter", "milter_clamd")
HEADER = "X-Postwarden-Attachments"
ONLY_ATTACHMENTS = """
milters:
  headers: {enabled: false}
  dkim: {enabled: false}
  spam: {enabled: false}
  attachments: {enabled: true}
"""


# -- part 1: the corpus through the pipeline -----------------------------------
def corpus_scan(work: Path, listing: bool) -> dict[str, Any]:
    files = unpack_corpus(work / "corpus")
    raws = [f.read_bytes() for f in files]
    settings = load_config_text(ONLY_ATTACHMENTS)
    service = ServiceContext(settings)
    stages = enabled_stages(service)
    runner = Runner(service)
    env = Envelope(mail_from="bench@example.org", recipients=("rcpt@example.net",))

    start = time.monotonic()
    for raw in raws:
        Message.from_bytes(raw)
    parse_seconds = time.monotonic() - start

    start = time.monotonic()
    results = [
        pipeline.scan(runner, stages, raw, env, str(f)) for f, raw in zip(files, raws, strict=True)
    ]
    scan_seconds = time.monotonic() - start
    runner.close()

    failed = [r.file for r in results if r.results[0].outcome != "ok"]
    types: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    lines = []
    for r in results:
        verdict = r.results[0].verdict
        actions[verdict.action.value] += 1
        found = verdict.details.get("files") or []
        assert isinstance(found, list)
        for f in found:
            types[f["type"]] += 1
        if found and listing:
            shown = ", ".join(f"{f['name'] or f['path']} ({f['type']})" for f in found)
            lines.append(f"  {Path(r.file).name}: {verdict.action.value}: {shown}")
    if listing:
        _log("messages with files (detected types):\n" + "\n".join(lines))
    return {
        "messages": len(raws),
        "with_files": sum(1 for r in results if r.results[0].verdict.details.get("files")),
        "errors": failed,
        "parse_rate": round(len(raws) / parse_seconds, 1),
        "scan_rate": round(len(raws) / scan_seconds, 1),
        "scan_ratio_to_parse": round(parse_seconds / scan_seconds, 3),
        "actions": dict(actions),
        "detected_types": dict(types.most_common()),
    }


# -- part 2: through Postfix ----------------------------------------------------
def bench_message() -> bytes:
    """A typical office message: text and a zip holding a PDF and a docx."""
    pdf = b"%PDF-1.4\n" + b"1 0 obj << /Type /Catalog >> endobj\n" * 200 + b"%%EOF\n"
    archive = zip_of({"quote.pdf": pdf, "terms.docx": docx()})
    text = "Hello,\r\n\r\nplease find the quote attached.\r\n\r\n" + "Regards\r\n" * 20
    return mime_message([Attachment("quote.zip", archive, "application/zip")], text=text)


class AttachmentsBench(Bench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.message_file = self.work / "message.txt"
        # smtp-source appends CRLF to each line itself.
        self.message_file.write_bytes(bench_message().replace(b"\r\n", b"\n"))
        self.clamd = ClamdInstance(self.work / "clamd", log_clean=True)
        self._milter: ServiceProcess | None = None

    def __enter__(self) -> AttachmentsBench:
        super().__enter__()
        (self.work / "clamd").mkdir()
        self.clamd.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.clamd.stop()
        super().__exit__(*exc)

    def _options(self, config: str) -> tuple[PostfixOptions, ServiceProcess | None]:
        extra = dict(kv.split("=", 1) for kv in self.args.main_cf)
        options = PostfixOptions(relayhost=self.sink.relayhost, main_cf=extra)
        if config == "none":
            return options, None
        cfg_dir = self.work / f"cfg-{config}"
        socket_dir = self.work / f"sock-{config}"
        socket_dir.mkdir(mode=0o755, exist_ok=True)
        block: dict[str, Any] = {"classes": {"archives": "warn"}}
        if config == "milter_clamd":
            block["clamav"] = {"enabled": True, "socket": f"unix:{self.clamd.socket}"}
        config_file = write_config(
            cfg_dir,
            socket_dir,
            self.redis.socket,
            milters=("attachments",),
            overrides={"log": {"level": "error"}, "milters": {"attachments": block}},
        )
        cfg_dir.chmod(0o755)
        self._milter = start_service(config_file, "milter", "attachments", log_dir=cfg_dir)
        options.smtpd_milters = [config_file.socket("attachments")]
        options.milter_default_action = "tempfail"  # a failing milter shows as lost mail
        return options, self._milter

    def _send(self, postfix: PostfixInstance, messages: int, sessions: int) -> None:
        assert SMTP_SOURCE is not None
        argv = [
            SMTP_SOURCE,
            "-s", str(sessions),
            "-m", str(messages),
            "-F", str(self.message_file),
            "-f", "bench@example.org",
            "-t", "sink@example.net",
            "-M", "client.bench.test",
            f"{postfix.host}:{postfix.port}",
        ]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.args.timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"smtp-source exited {proc.returncode}: {proc.stderr.strip()}")

    def run_one(self, config: str, round_no: int) -> RunResult:
        a = self.args
        options, service = self._options(config)
        postfix = PostfixInstance(options)
        try:
            postfix.start()
            warm = min(a.warmup, a.messages)
            if warm:
                self._send(postfix, warm, min(a.sessions, warm))
                self.sink.wait_for(warm, a.timeout)
            self.sink.clear()
            scans_before = self.clamd.clean_scans()
            start = time.monotonic()
            error = ""
            client_seconds = float("nan")
            try:
                self._send(postfix, a.messages, a.sessions)
                client_seconds = time.monotonic() - start
                self.sink.wait_for(a.messages, max(1.0, a.timeout - client_seconds))
            except (TimeoutError, RuntimeError, subprocess.TimeoutExpired) as exc:
                error = str(exc).splitlines()[0]
            seconds = time.monotonic() - start
            delivered = self.sink.count
            if not error and service is not None:
                stamped = sum(
                    1 for m in self.sink.messages if "archives=warn" in (m.header(HEADER) or "")
                )
                if stamped != delivered:
                    error = f"only {stamped} of {delivered} messages carry {HEADER}"
            if not error and config == "milter_clamd":
                scanned = self.clamd.clean_scans() - scans_before
                if scanned < delivered:
                    error = f"clamd logged {scanned} clean scans for {delivered} messages"
            return RunResult(
                config=config,
                round=round_no,
                messages=a.messages,
                delivered=delivered,
                seconds=round(seconds, 3),
                client_seconds=round(client_seconds, 3),
                rate=round(delivered / seconds, 1) if seconds > 0 else 0.0,
                ok=not error and delivered == a.messages,
                error=error,
            )
        finally:
            postfix.stop()
            if self._milter is not None:
                self._milter.stop()
                self._milter = None
            self.sink.clear()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="attachments milter: corpus scan and Postfix rates")
    ap.add_argument("--messages", type=int, default=1000, help="messages per Postfix run (1000)")
    ap.add_argument("--sessions", type=int, default=10, help="concurrent SMTP sessions (10)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; median shown (3)")
    ap.add_argument("--warmup", type=int, default=50, help="untimed messages first (50)")
    ap.add_argument("--timeout", type=float, default=300.0, help="deadline per run, seconds")
    ap.add_argument("--list", action="store_true", help="list corpus files with detected types")
    ap.add_argument(
        "--main-cf", action="append", default=[], metavar="NAME=VALUE",
        help="extra Postfix main.cf parameter (repeatable)",
    )  # fmt: skip
    ap.add_argument("--json", type=Path, help="also write the JSON result here")
    args = ap.parse_args(argv)
    args.size = len(bench_message())
    args.client = "smtp-source -F"
    if os.geteuid() != 0:
        ap.error("Postfix instances need root")
    if SMTP_SOURCE is None:
        ap.error("smtp-source (Debian postfix package) is needed")
    results: list[RunResult] = []
    started = time.monotonic()
    with AttachmentsBench(args) as bench:
        scan = corpus_scan(bench.work, args.list)
        _log(
            f"corpus: {scan['messages']} messages, scan {scan['scan_rate']} msgs/s,"
            f" parse only {scan['parse_rate']} msgs/s, {len(scan['errors'])} errors"
        )
        results.extend(run_rounds(bench, CONFIGS, args.rounds))
    summary = summarize(results, CONFIGS)
    params = {"message_bytes": args.size, "corpus_scan": scan}
    status = report("attachments", argv, args, params, started, summary, results)
    if scan["errors"]:
        _log(f"corpus messages that failed: {scan['errors'][:10]}")
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
