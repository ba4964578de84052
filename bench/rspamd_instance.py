"""A private Rspamd (Debian's `rspamd` package) for the spam benchmarks.

The packaged service is never used: this writes its own top-level
rspamd.conf in a temporary directory (the shipped $CONFDIR rules and
modules, our overrides as its $LOCAL_CONFDIR) and runs `rspamd -f` on it,
listening on loopback only:

- a normal worker (HTTP scanning API, what `rspamc` talks to) on a free
  127.0.0.1 port;
- an rspamd_proxy worker with `milter = yes` on another free port, passing
  each message to that normal worker (the packaged proxy setup), for Postfix's
  `smtpd_milters = inet:127.0.0.1:PORT`.

Network checks are off (the modules that ask DNS lists, fetch keys or
policies, or talk to fuzzy/Redis/external services are disabled) and every
DNS query Rspamd still makes goes to `nameserver` (the benchmark's local DNS
server). Bayes needs Redis, which is not configured: rules only.
`milter_headers` adds X-Spamd-Result to every message (local and
authenticated senders too), so a benchmark can check the work was done.
Actions: no greylist (a benchmark cannot retry) and no reject below 1000,
so every message is delivered; scores are untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

# Modules that need the network (DNS lists, DNS keys/policies, fuzzy
# storage, HTTP maps) or Redis: disabled for "network checks off".
NETWORK_MODULES = (
    "rbl", "surbl", "emails", "spf", "dkim", "dmarc", "arc", "asn", "fuzzy_check", "dcc",
    "mx_check", "neural", "reputation", "url_redirector", "phishing", "ratelimit", "greylist",
    "replies", "history_redis", "whitelist", "dkim_signing", "antivirus", "external_services",
    "clickhouse", "elastic", "metadata_exporter", "rspamd_update", "bimi", "p0f", "aws_s3",
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RspamdInstance:
    def __init__(self, work: Path, nameserver: str) -> None:
        if shutil.which("rspamd") is None:
            raise SystemExit("rspamd not found: apt-get install rspamd")
        self.work = work
        self.nameserver = nameserver
        self.normal_port = _free_port()
        self.milter_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def milter(self) -> str:
        """Postfix's smtpd_milters value."""
        return f"inet:127.0.0.1:{self.milter_port}"

    def _write_config(self) -> Path:
        local = self.work / "local"
        for d in ("local/local.d", "run", "db", "log"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        for name in NETWORK_MODULES:
            (local / "local.d" / f"{name}.conf").write_text("enabled = false;\n")
        (local / "local.d" / "milter_headers.conf").write_text(
            'use = ["x-spamd-result", "x-spam-status"];\n'
            "skip_local = false;\nskip_authenticated = false;\n"
        )
        (local / "local.d" / "actions.conf").write_text(
            "reject = 1000;\nadd_header = 6;\ngreylist = null;\n"
        )
        host, _, port = self.nameserver.partition(":")
        conf = self.work / "rspamd.conf"
        conf.write_text(f"""\
.include "$CONFDIR/common.conf"
options {{
    pidfile = "{self.work}/run/rspamd.pid";
    .include "$CONFDIR/options.inc"
    dns {{ nameserver = ["{host}:{port or 53}"]; timeout = 1s; retransmits = 1; }}
    local_addrs = [];
}}
logging {{
    type = "file";
    filename = "{self.work}/log/rspamd.log";
    level = "error";
}}
worker "normal" {{
    bind_socket = "127.0.0.1:{self.normal_port}";
    .include "$CONFDIR/worker-normal.inc"
}}
worker "rspamd_proxy" {{
    bind_socket = "127.0.0.1:{self.milter_port}";
    milter = yes;
    timeout = 120s;
    upstream "local" {{ default = yes; hosts = "127.0.0.1:{self.normal_port}"; }}
    count = 1;
    max_retries = 5;
    discard_on_reject = false;
    quarantine_on_reject = false;
    spam_header = "X-Spam";
    reject_message = "Spam message rejected";
}}
""")
        return conf

    def start(self, timeout: float = 120.0) -> None:
        conf = self._write_config()
        argv = ["rspamd", "-f", "-c", str(conf), f"--var=LOCAL_CONFDIR={self.work / 'local'}",
                f"--var=DBDIR={self.work / 'db'}", f"--var=RUNDIR={self.work / 'run'}",
                f"--var=LOGDIR={self.work / 'log'}"]  # fmt: skip
        if os.geteuid() == 0:
            shutil.chown(self.work, "_rspamd", "_rspamd")
            for p in self.work.rglob("*"):
                shutil.chown(p, "_rspamd", "_rspamd")
            argv += ["-u", "_rspamd", "-g", "_rspamd"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ping()
                socket.create_connection(("127.0.0.1", self.milter_port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read() if self.proc.stderr else b""
                    raise SystemExit(
                        f"rspamd exited {self.proc.returncode}: {err[-800:]!r}"
                    ) from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit(f"rspamd did not start in {timeout:.0f}s") from None
                time.sleep(0.2)  # readiness poll, not a measurement

    def ping(self) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.normal_port}/ping", timeout=2) as r:
            if r.read().strip() != b"pong":
                raise OSError("rspamd normal worker: no pong")

    def check(self, raw: bytes, headers: dict[str, str] | None = None) -> dict[str, object]:
        """Scan one message through the normal worker's /checkv2 (rspamc's API);
        `headers` are request headers such as Settings (per-request settings)."""
        url = f"http://127.0.0.1:{self.normal_port}/checkv2"
        req = urllib.request.Request(
            url, data=raw, headers={"Rcpt": "user@example.net", **(headers or {})}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            result: dict[str, object] = json.loads(r.read())
        return result

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def rspamd_version() -> str:
    out = subprocess.run(["rspamd", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "unknown"
