"""A private clamd for tests and benchmarks: own config, own signatures.

There is no network for freshclam, so the signature database is built here:
`sigtool --md5` over the EICAR test file gives a one-line `.hdb` (MD5 hash
signatures, clamav's signatures.md "Hash-based signatures"), and an `.ndb`
body signature finds the EICAR string at any offset (so inside archives or
with bytes around it). clamd runs in the foreground from its own clamd.conf
(LocalSocket and DatabaseDirectory in a temp dir); readiness is its PING
answered with PONG, never a sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.harness.ports import make_traversable

CLAMD = "/usr/sbin/clamd"
SIGTOOL = "/usr/bin/sigtool"
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


class ClamdError(RuntimeError):
    pass


def require_clamav() -> None:
    for tool in (CLAMD, SIGTOOL):
        if not os.path.exists(tool):
            raise ClamdError(f"{tool} is missing: apt-get install clamav-daemon (see ./dev)")


class ClamdInstance:
    """`with ClamdInstance(tmp) as c:` ... `c.socket` is a unix socket path."""

    def __init__(self, base_dir: Path, *, log_clean: bool = False) -> None:
        require_clamav()
        self.log_clean = log_clean
        self.base = base_dir
        self.db = base_dir / "db"
        self.socket = base_dir / "clamd.sock"
        self.log = base_dir / "clamd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _write(self) -> None:
        self.db.mkdir(parents=True, exist_ok=True)
        sample = self.base / "eicar.com"
        sample.write_bytes(EICAR)
        # The hash signature: "md5:size:name", exactly as sigtool prints it.
        hdb = subprocess.run(
            [SIGTOOL, "--md5", str(sample)], capture_output=True, check=True, cwd=self.base
        ).stdout.decode()
        (self.db / "postwarden-test.hdb").write_text(hdb.replace(str(sample), "Eicar-Test-Hash"))
        # The body signature: name:target type (0 = any file):offset (*):hex.
        (self.db / "postwarden-test.ndb").write_text(f"Eicar-Test-Body:0:*:{EICAR.hex()}\n")
        (self.base / "clamd.conf").write_text(
            "\n".join(
                [
                    f"LocalSocket {self.socket}",
                    "LocalSocketMode 666",
                    f"DatabaseDirectory {self.db}",
                    f"LogFile {self.log}",
                    f"TemporaryDirectory {self.base}",
                    f"PidFile {self.base / 'clamd.pid'}",
                    "Foreground yes",
                    "StreamMaxLength 25M",
                    "MaxThreads 4",
                    f"LogClean {'yes' if self.log_clean else 'no'}",
                    "",
                ]
            )
        )
        make_traversable(self.base)
        if os.geteuid() == 0:
            shutil.chown(self.base, "clamav")
            for p in self.base.rglob("*"):
                shutil.chown(p, "clamav")

    def start(self, timeout: float = 60.0) -> ClamdInstance:
        self._write()
        argv = [CLAMD, "--config-file", str(self.base / "clamd.conf")]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise ClamdError(
                    f"clamd exited with {self.proc.returncode}: {err}{self.log_text()}"
                )
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise ClamdError(f"clamd did not answer PING within {timeout}s: {self.log_text()}")

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2.0)
                s.connect(str(self.socket))
                s.sendall(b"zPING\0")
                return s.recv(16).startswith(b"PONG")
        except OSError:
            return False

    def clean_scans(self) -> int:
        """Streams clamd logged as clean (with `log_clean`): proof of work."""
        return self.log_text().count("instream(local): OK")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)

    def __enter__(self) -> ClamdInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
