"""OpenDKIM (Debian `opendkim`) as a milter next to ours, for cross-checks and benches.

`OpenDkim(directory, mode="s"|"v", ...)` writes an opendkim.conf and runs
`opendkim -f -x CONF` on a unix socket that Postfix's smtpd can reach.
Keys are looked up at the given nameserver ("IP:PORT", the test DNS
server): this build resolves through libunbound, whose forwarders accept
`IP@PORT`.

Settings needed to run it unprivileged in a temp dir, found by running it:
`RequireSafeKeys no` (temp dirs are world-traversable), `UMask 000` (the
socket must be writable by user postfix), `Syslog no` with `-f` (nothing to
daemonise or log to).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.ports import wait_for_unix_socket

OPENDKIM = shutil.which("opendkim", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/opendkim"


def require_opendkim() -> str:
    if not os.path.exists(OPENDKIM):
        raise RuntimeError("OpenDKIM is not installed: run ./dev test (apt-get install opendkim)")
    return OPENDKIM


@dataclass
class OpenDkim:
    directory: Path
    socket_path: Path
    mode: str  # "s" (sign), "v" (verify), "sv"
    nameserver: str  # "IP:PORT"
    domain: str = ""
    selector: str = ""
    key_file: Path | None = None
    authserv_id: str = "opendkim.test"
    extra: tuple[str, ...] = ()  # more opendkim.conf lines
    # OpenDKIM signs (and does not verify) mail from these; the test client
    # connects from 127.0.0.1.
    internal_hosts: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def socket(self) -> str:
        """Postfix notation for smtpd_milters."""
        return f"unix:{self.socket_path}"

    def config_text(self) -> str:
        host, _, port = self.nameserver.rpartition(":")
        lines = [
            "Syslog no",
            "Background no",
            f"Mode {self.mode}",
            f"Socket local:{self.socket_path}",
            "UMask 000",
            f"Nameservers {host}@{port}",
            "Canonicalization relaxed/relaxed",
            f"AuthservID {self.authserv_id}",
            "RequireSafeKeys no",
            "UserID root",
            f"InternalHosts {self.internal_hosts}",
        ]
        if self.key_file is not None:
            lines += [
                f"Domain {self.domain}",
                f"Selector {self.selector}",
                f"KeyFile {self.key_file}",
            ]
        return "\n".join([*lines, *self.extra]) + "\n"

    def start(self) -> OpenDkim:
        binary = require_opendkim()
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "opendkim.conf"
        conf.write_text(self.config_text())
        log = (self.directory / "opendkim.log").open("ab")
        self.proc = subprocess.Popen(
            [binary, "-f", "-x", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_unix_socket(self.socket_path, 30.0)
        except BaseException:
            self.stop()
            raise RuntimeError(f"opendkim did not start:\n{self.log_text()}") from None
        return self

    def log_text(self) -> str:
        path = self.directory / "opendkim.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
