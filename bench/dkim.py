"""Messages/s through Postfix with DKIM signing and verifying: postwarden vs
OpenDKIM vs no milter, in one run, plus the milter's CPU ms per message.

Configurations (interleaved per round, order rotated every round):

- `none`: Postfix alone (the baseline);
- `sign-pw`: `postwarden milter dkim` signs (client 127.0.0.1 is in
  trusted_networks; RSA-2048, relaxed/relaxed);
- `sign-odk`: OpenDKIM 2.11 (`opendkim`, Mode s) signs with the same key;
- `verify-pw`: postwarden verifies the message's RSA-2048 signature and
  writes Authentication-Results (trusted_networks empty, so 127.0.0.1 is
  inbound; DMARC off, as OpenDKIM has none; ARC on, finding no chain);
- `verify-odk`: OpenDKIM (Mode v, QueryCache on) verifies it.

Every run sends the same ~5 KB message (already signed by d=sender.example)
with smtp-source -F over 10 sessions. The test DNS server
(tests/fixtures/dnsserver.py) publishes both keys; postwarden caches key
records in the bench's Redis, OpenDKIM in its query cache. A run only counts
when every delivered message carries the milter's work: a DKIM-Signature with
d=example.org for signing, an Authentication-Results with dkim=pass from the
milter for verifying. CPU is the milter process's user+system time over the
run (warm-up included) divided by the messages it saw.

    sudo .venv/bin/python -m bench.dkim [--messages 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import dkim

from bench.throughput import SMTP_SOURCE, Bench, RunResult, _log, report, run_rounds, summarize
from milters.dkim.crypto import Signer
from milters.dkim.sign import SignRequest, sign
from postwarden.config.sections.dkim import DEFAULT_OVERSIGN_HEADERS, DEFAULT_SIGN_HEADERS
from postwarden.dkim_keys import PrivateKey, dns_record, generate_key, write_private_key
from tests.fixtures.dnsserver import DnsServer, Zone
from tests.harness.opendkim import OpenDkim
from tests.harness.postfix import PostfixOptions
from tests.harness.services import ServiceProcess, start_service, write_config

CONFIGS = ("none", "sign-pw", "sign-odk", "verify-pw", "verify-odk")
AUTHSERV = {"verify-pw": "pw.bench.test", "verify-odk": "odk.bench.test"}


def bench_message(size: int, sender_key: Signer) -> bytes:
    """A message From example.org, signed by sender.example; LF line ends."""
    line = "The quarterly figures are attached; please review them before Monday.\n"
    body = (line * max(1, size // len(line))).replace("\n", "\r\n").encode()
    head = (
        b"From: Bench <bench@example.org>\r\nTo: <sink@example.net>\r\n"
        b"Subject: DKIM throughput\r\nDate: Wed, 02 Dec 2026 12:00:00 +0000\r\n"
        b"Message-ID: <bench@example.org>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n"
    )
    headers, canon_body = dkim.rfc822_parse(head + b"\r\n" + body)
    value = sign(
        headers,
        canon_body,
        SignRequest("sender.example", "b1", sender_key, DEFAULT_SIGN_HEADERS,
                    DEFAULT_OVERSIGN_HEADERS, int(time.time())),
    )  # fmt: skip
    raw = f"DKIM-Signature: {value}\r\n".encode() + head + b"\r\n" + body
    return raw.replace(b"\r\n", b"\n")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class DkimBench(Bench):
    def __init__(self, args: argparse.Namespace, dns: DnsServer) -> None:
        super().__init__(args)
        self.dns = dns
        self.key_file = self.work / "example.org.s1.key"
        self._pw: ServiceProcess | None = None
        self._odk: OpenDkim | None = None
        self._cpu_start = 0.0
        self.cpu_ms: dict[str, list[float]] = {}

    def __enter__(self) -> DkimBench:
        super().__enter__()
        return self

    def _options(self, config: str) -> tuple[PostfixOptions, ServiceProcess | None]:
        extra = dict(kv.split("=", 1) for kv in self.args.main_cf)
        options = PostfixOptions(relayhost=self.sink.relayhost, main_cf=extra)
        options.milter_default_action = "tempfail"  # a failing milter shows as lost mail
        if config == "none":
            return options, None
        if config.endswith("-odk"):
            self._odk = OpenDkim(
                self.work / f"odk-{config}", self.work / f"odk-{config}.sock",
                "s" if config.startswith("sign") else "v", self.dns.nameserver,
                "example.org", "s1", self.key_file, AUTHSERV.get(config, "odk.bench.test"),
                ("QueryCache yes", "LogWhy no"),
                # verifying: 127.0.0.1 (smtp-source) must not count as internal
                "127.0.0.1" if config.startswith("sign") else "192.0.2.255",
            ).start()  # fmt: skip
            options.smtpd_milters = [self._odk.socket]
            self._cpu_start = cpu_seconds(self._pid())
            return options, None
        verify = config.startswith("verify")
        dkim_cfg: dict[str, object] = {
            "authserv_id": AUTHSERV.get(config, "pw.bench.test"),
            "dmarc": False,
            "keys": [{"domain": "example.org", "selector": "s1", "key_file": str(self.key_file)}],
        }
        overrides: dict[str, object] = {
            "log": {"level": "warning"},
            "dns": {"nameservers": [self.dns.nameserver], "timeout": "2s"},
            "milters": {"dkim": dkim_cfg},
        }
        if verify:
            overrides["trusted_networks"] = []
        cfg_dir = self.work / f"cfg-{config}"
        socket_dir = self.work / f"sock-{config}"
        socket_dir.mkdir(mode=0o755, exist_ok=True)
        config_file = write_config(
            cfg_dir, socket_dir, self.redis.socket, milters=("dkim",), overrides=overrides
        )
        cfg_dir.chmod(0o755)
        self._pw = start_service(config_file, "milter", "dkim", log_dir=cfg_dir)
        options.smtpd_milters = [config_file.socket("dkim")]
        self._cpu_start = cpu_seconds(self._pid())
        return options, None

    def _pid(self) -> int:
        if self._pw is not None:
            return self._pw.pid
        assert self._odk is not None and self._odk.proc is not None
        return self._odk.proc.pid

    def check_delivered(self, config: str, service: ServiceProcess | None, delivered: int) -> str:
        if config == "none":
            return ""
        seen = delivered + min(self.args.warmup, self.args.messages)
        used = cpu_seconds(self._pid()) - self._cpu_start
        self.cpu_ms.setdefault(config, []).append(round(1000 * used / seen, 3))
        if config.startswith("sign"):
            done = sum(
                1 for m in self.sink.messages
                if any("d=example.org" in " ".join(v.split()) for v in m.headers("DKIM-Signature"))
            )  # fmt: skip
            what = "a DKIM-Signature with d=example.org"
        else:
            done = sum(
                1 for m in self.sink.messages
                if any(
                    v.strip().startswith(AUTHSERV[config]) and "dkim=pass" in v
                    for v in m.headers("Authentication-Results")
                )
            )  # fmt: skip
            what = f"{AUTHSERV[config]} dkim=pass"
        return "" if done == delivered else f"only {done} of {delivered} messages carry {what}"

    def run_one(self, config: str, round_no: int) -> RunResult:
        try:
            return super().run_one(config, round_no)
        finally:
            if self._pw is not None:
                self._pw.stop()
                self._pw = None
            if self._odk is not None:
                self._odk.stop()
                self._odk = None


def run_signed_rounds(
    bench: DkimBench,
    args: argparse.Namespace,
    signing_key: PrivateKey,
    sender_key: PrivateKey,
    results: list[RunResult],
) -> None:
    """The key in place and a message signed by the remote sender, then the rounds."""
    write_private_key(bench.key_file, signing_key)
    args.message_file = bench.work / "message.eml"
    args.message_file.write_bytes(bench_message(args.size, Signer(sender_key)))
    results.extend(run_rounds(bench, CONFIGS, args.rounds))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="DKIM sign/verify: postwarden vs OpenDKIM vs none")
    ap.add_argument("--messages", type=int, default=1000, help="messages per run (1000)")
    ap.add_argument("--sessions", type=int, default=10, help="concurrent SMTP sessions (10)")
    ap.add_argument("--size", type=int, default=5000, help="approximate body size (5000)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; median shown (3)")
    ap.add_argument("--warmup", type=int, default=50, help="untimed messages first (50)")
    ap.add_argument("--timeout", type=float, default=300.0, help="deadline per run, seconds")
    ap.add_argument(
        "--main-cf", action="append", default=[], metavar="NAME=VALUE",
        help="extra Postfix main.cf parameter (repeatable)",
    )  # fmt: skip
    ap.add_argument("--json", type=Path, help="also write the JSON result here")
    args = ap.parse_args(argv)
    args.client = "smtp-source"
    if os.geteuid() != 0:
        ap.error("Postfix instances need root")
    if SMTP_SOURCE is None:
        ap.error("smtp-source (Debian postfix package) is needed to send a given message")
    signing_key = generate_key("rsa-sha256")
    sender_key = generate_key("rsa-sha256")
    zone: Zone = {
        "s1._domainkey.example.org": [("TXT", dns_record("example.org", "s1", signing_key).value)],
        "b1._domainkey.sender.example": [
            ("TXT", dns_record("sender.example", "b1", sender_key).value)
        ],
    }
    results: list[RunResult] = []
    started = time.monotonic()
    with DnsServer(zone, ttl=3600) as dns, DkimBench(args, dns) as bench:
        run_signed_rounds(bench, args, signing_key, sender_key, results)
        cpu = bench.cpu_ms
    summary = summarize(results, CONFIGS)
    for config, values in cpu.items():
        entry = summary[config]
        assert isinstance(entry, dict)
        entry["milter_cpu_ms_per_msg"] = sorted(values)[len(values) // 2]
    _log("milter CPU ms/message (median): "
         + ", ".join(f"{c} {sorted(v)[len(v) // 2]:.2f}" for c, v in cpu.items()))  # fmt: skip
    return report("dkim", argv, args, {"main_cf": args.main_cf}, started, summary, results)


if __name__ == "__main__":
    sys.exit(main())
