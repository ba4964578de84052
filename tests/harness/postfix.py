"""A real Postfix 3.x instance in a temporary directory, for integration tests.

Each `PostfixInstance` has its own config_directory, queue_directory and
data_directory, an smtpd on a free 127.0.0.1 port, and relays every accepted
message to `relayhost` (the test sink). Several instances can run at once:
Postfix keys its master lock (data_directory/master.lock) and pid file
(queue_directory/pid/master.pid) on those directories, and each instance logs
under its own `syslog_name` into its own `maillog_file`.

What Postfix 3.7 on Debian 12 needs here, found by running it:
- No syslog daemon runs, so without `maillog_file` (served by the postlogd
  service in master.cf) Postfix fails silently. The log directory must be
  listed in `maillog_file_prefixes` (default only /var and /dev/stdout).
- `postfix -c DIR start` needs DIR/main.cf and DIR/master.cf; as root it
  accepts a non-default config directory without `alternate_config_directories`.
  The queue_directory must exist first (postfix-script creates its subdirs);
  data_directory must be owned by `mail_owner`.
- Every parent directory must be searchable by user `postfix`.
- Debian's stock master.cf chroots smtpd and friends into /var/spool/postfix;
  ours sets chroot=n everywhere so absolute socket paths work as written.
- XCLIENT LOGIN= only sets `sasl_username` when `smtpd_sasl_auth_enable = yes`
  (XCLIENT_README); the Cyrus backend loads with no config, which is enough.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.ports import free_port, shared_tempdir, wait_for_banner

POSTFIX = shutil.which("postfix", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/postfix"
POSTQUEUE = shutil.which("postqueue", path="/usr/sbin:/usr/bin") or "/usr/sbin/postqueue"
POSTSUPER = shutil.which("postsuper", path="/usr/sbin:/usr/bin") or "/usr/sbin/postsuper"

_instance_counter = 0

# Our own master.cf: the services an smtpd -> cleanup -> qmgr -> smtp relay
# path needs, none chrooted, plus postlogd for maillog_file.
_MASTER_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_QUEUE_DIRS = (
    "active", "bounce", "corrupt", "defer", "deferred", "flush",
    "hold", "incoming", "private", "saved", "trace",
)  # fmt: skip

_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")


class PostfixError(RuntimeError):
    """Postfix refused to start/stop, with the tail of its maillog."""


@dataclass
class SmtpResult:
    """Every reply of one SMTP transaction; never raises on 4xx/5xx.

    `replies` maps a stage ("connect", "ehlo", "xclient", "xclient_ehlo",
    "mail", "rcpt:<addr>", "data") to (code, text). A stage that never
    happened is absent. A dropped connection is recorded as code -1.
    """

    replies: dict[str, tuple[int, str]] = field(default_factory=dict)

    def code(self, stage: str) -> int | None:
        reply = self.replies.get(stage)
        return None if reply is None else reply[0]

    def text(self, stage: str) -> str:
        reply = self.replies.get(stage)
        return "" if reply is None else reply[1]

    @property
    def accepted(self) -> bool:
        """True when Postfix answered 250 to the end of DATA."""
        return self.code("data") == 250

    @property
    def queue_id(self) -> str | None:
        match = _QUEUED_AS.search(self.text("data"))
        return match.group(1) if match else None

    @property
    def last(self) -> tuple[str, int, str]:
        """The final stage reached: (stage, code, text)."""
        stage = list(self.replies)[-1]
        code, text = self.replies[stage]
        return stage, code, text

    def rcpt_codes(self) -> dict[str, int]:
        return {
            stage.removeprefix("rcpt:"): code
            for stage, (code, _) in self.replies.items()
            if stage.startswith("rcpt:")
        }


@dataclass(frozen=True)
class Xclient:
    """Attributes for Postfix's XCLIENT command (XCLIENT_README).

    LOGIN becomes the session's SASL login, which Postfix hands to policy
    services as `sasl_username` and to milters as `{auth_authen}`.
    """

    addr: str | None = None
    name: str | None = None
    helo: str | None = None
    login: str | None = None
    proto: str | None = None

    def command_args(self) -> str:
        parts = []
        if self.addr is not None:
            parts.append(f"ADDR={self.addr}")
            # Without NAME Postfix keeps the real peer's name (localhost).
            parts.append(f"NAME={self.name or '[UNAVAILABLE]'}")
        elif self.name is not None:
            parts.append(f"NAME={self.name}")
        if self.helo is not None:
            parts.append(f"HELO={self.helo}")
        if self.login is not None:
            parts.append(f"LOGIN={self.login}")
        if self.proto is not None:
            parts.append(f"PROTO={self.proto}")
        return " ".join(parts)


def _decode(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def smtp_send(
    host: str,
    port: int,
    mail_from: str,
    rcpt_to: Iterable[str],
    data: bytes | None,
    *,
    helo: str = "client.test",
    xclient: Xclient | None = None,
    timeout: float = 60.0,
) -> SmtpResult:
    """Run one SMTP transaction and record every reply; never raises on 4xx/5xx.

    `data` is sent as-is (CRLF line ends expected; smtplib dot-stuffs it).
    With `data=None` the transaction stops after RCPT (then RSET/QUIT).
    """
    result = SmtpResult()
    client = smtplib.SMTP(timeout=timeout)
    try:
        code, text = client.connect(host, port)
        result.replies["connect"] = (code, _decode(text))
        if code != 220:
            return result
        code, text = client.ehlo(helo)
        result.replies["ehlo"] = (code, _decode(text))
        if xclient is not None:
            code, text = client.docmd("XCLIENT", xclient.command_args())
            result.replies["xclient"] = (code, _decode(text))
            if code != 220:
                return result
            # XCLIENT starts a new session: greet again (XCLIENT_README). The
            # new EHLO sets the HELO name, so repeat the XCLIENT one if given.
            client.ehlo_resp = None
            client.esmtp_features = {}
            code, text = client.ehlo(xclient.helo or helo)
            result.replies["xclient_ehlo"] = (code, _decode(text))
        code, text = client.mail(mail_from)
        result.replies["mail"] = (code, _decode(text))
        if code != 250:
            return result
        any_rcpt = False
        for rcpt in rcpt_to:
            code, text = client.rcpt(rcpt)
            result.replies[f"rcpt:{rcpt}"] = (code, _decode(text))
            any_rcpt = any_rcpt or code in (250, 251)
        if not any_rcpt or data is None:
            client.rset()
            return result
        reply: bytes | str
        try:
            code, reply = client.data(data)
        except smtplib.SMTPDataError as exc:  # no 354: the refusal of DATA itself
            code, reply = exc.smtp_code, exc.smtp_error
        result.replies["data"] = (code, _decode(reply))
        return result
    except smtplib.SMTPServerDisconnected as exc:
        result.replies["disconnect"] = (-1, str(exc))
        return result
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


def make_message(
    subject: str = "harness test",
    body: str = "Hello from the postwarden test harness.\r\n",
    *,
    mail_from: str = "sender@example.org",
    to: str = "rcpt@example.net",
    extra_headers: Mapping[str, str] | None = None,
    message_id: str | None = None,
) -> bytes:
    """A small RFC 5322 message with CRLF line ends."""
    lines = [
        f"From: <{mail_from}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Message-ID: <{message_id or f'{time.monotonic_ns()}.{os.getpid()}@example.org'}>",
        "Date: Tue, 24 Nov 2026 05:00:00 +0000",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
    ]
    for name, value in (extra_headers or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")


@dataclass
class PostfixOptions:
    """What a test wants from its Postfix; `main_cf` overrides anything."""

    relayhost: str
    smtpd_milters: Sequence[str] = ()
    non_smtpd_milters: Sequence[str] = ()
    milter_default_action: str = "tempfail"  # Postfix's own default
    milter_protocol: int = 6
    policy_services: Sequence[str] = ()
    end_of_data_policy_services: Sequence[str] = ()
    # Restrictions placed before the policy services (e.g. ["reject"]).
    recipient_restrictions: Sequence[str] = ()
    header_checks: Sequence[str] = ()  # lines of a regexp: table
    body_checks: Sequence[str] = ()
    main_cf: Mapping[str, str] = field(default_factory=dict)
    # main.cf text pasted verbatim at the end (e.g. `postwarden postfix-config`
    # output); the harness's own entries for the names it sets are left out,
    # as an admin replaces lines when pasting.
    main_cf_text: str = ""
    smtpd_maxproc: str = "-"  # master.cf max processes for smtpd ("-" = 100)


class PostfixInstance:
    """Postfix in a temp dir: start, reload, stop (always cleans up), inspect."""

    def __init__(self, options: PostfixOptions, base_dir: Path | None = None) -> None:
        global _instance_counter
        _instance_counter += 1
        self.options = options
        # A short private tree: unix socket paths must fit in 108 bytes.
        self.root = base_dir if base_dir is not None else shared_tempdir("pw-pfx-")
        self.config_dir = self.root / "conf"
        self.queue_dir = self.root / "queue"
        self.data_dir = self.root / "data"
        self.log_dir = self.root / "log"
        self.maillog = self.log_dir / "maillog"
        self.syslog_name = f"pwtest{os.getpid()}-{_instance_counter}"
        self.host = "127.0.0.1"
        self.port = 0
        self.master_pid: int | None = None
        self._owns_root = base_dir is None

    # -- configuration -----------------------------------------------------
    def main_cf_params(self) -> dict[str, str]:
        o = self.options
        params: dict[str, str] = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": self.syslog_name,
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.log_dir),
            "myhostname": "mx.postwarden.test",
            "mydomain": "postwarden.test",
            "myorigin": "$myhostname",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            # Everything relays to the sink: no local domains, no DNS.
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "relayhost": o.relayhost,
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "smtpd_peername_lookup": "no",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "biff": "no",
            "append_dot_mydomain": "no",
            # Only loopback can reach this smtpd; relay for any client, so
            # XCLIENT ADDR=<remote ip> tests are judged by our restrictions.
            # (Postfix refuses a list without reject_unauth_destination or
            # similar, hence the unreachable entry after static:OK.)
            "smtpd_relay_restrictions": "check_client_access static:OK, reject_unauth_destination",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "cyrus",
            "cyrus_sasl_config_path": str(self.config_dir),
            "milter_default_action": o.milter_default_action,
            "milter_protocol": str(o.milter_protocol),
            # Fail fast in tests rather than after the 5 minute defaults.
            "smtp_connect_timeout": "10s",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "delay_warning_time": "0",
        }
        if o.smtpd_milters:
            params["smtpd_milters"] = ", ".join(o.smtpd_milters)
        if o.non_smtpd_milters:
            params["non_smtpd_milters"] = ", ".join(o.non_smtpd_milters)
        rcpt = list(o.recipient_restrictions)
        rcpt += [f"check_policy_service {p}" for p in o.policy_services]
        if rcpt:
            params["smtpd_recipient_restrictions"] = ", ".join(rcpt)
        if o.end_of_data_policy_services:
            params["smtpd_end_of_data_restrictions"] = ", ".join(
                f"check_policy_service {p}" for p in o.end_of_data_policy_services
            )
        if o.header_checks:
            params["header_checks"] = f"regexp:{self.config_dir / 'header_checks'}"
        if o.body_checks:
            params["body_checks"] = f"regexp:{self.config_dir / 'body_checks'}"
        params.update(o.main_cf)
        return params

    def _write_config(self) -> None:
        for d in (self.config_dir, self.queue_dir, self.data_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)
        postfix_user = pwd.getpwnam("postfix")
        # master.lock and the verify/scache databases live here (mail_owner).
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
        self._make_queue_tree(postfix_user.pw_uid, postfix_user.pw_gid)
        pasted = set(re.findall(r"^([a-z_0-9]+)\s*=", self.options.main_cf_text, re.M))
        params = {k: v for k, v in self.main_cf_params().items() if k not in pasted}
        main = "".join(f"{k} = {v}\n" for k, v in params.items()) + self.options.main_cf_text
        (self.config_dir / "main.cf").write_text(main)
        smtpd = f"{self.host}:{self.port} inet n - n - {self.options.smtpd_maxproc} smtpd\n"
        (self.config_dir / "master.cf").write_text(smtpd + _MASTER_SERVICES)
        # postfix(1) sleeps (in 0.3 s steps, ~2 s) while main.cf's mtime is
        # too recent; backdating the fresh files skips that wait.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (past, past))
        if self.options.header_checks:
            (self.config_dir / "header_checks").write_text(
                "\n".join(self.options.header_checks) + "\n"
            )
        if self.options.body_checks:
            (self.config_dir / "body_checks").write_text("\n".join(self.options.body_checks) + "\n")

    def _make_queue_tree(self, uid: int, gid: int) -> None:
        """Create the queue subdirectories as post-install would, then skip it.

        `postfix start` normally runs `post-install create-missing` and a
        postsuper scan (~2 s). postfix-script skips both once when
        `queue_directory/quick-start` exists (the hook postmulti uses for new
        instances); a fresh, empty queue needs neither.
        """
        postdrop = grp.getgrnam("postdrop").gr_gid
        for name in _QUEUE_DIRS:
            path = self.queue_dir / name
            path.mkdir(exist_ok=True)
            os.chown(path, uid, 0)
            os.chmod(path, 0o700)
        for name, mode in (("maildrop", 0o730), ("public", 0o710)):
            path = self.queue_dir / name
            path.mkdir(exist_ok=True)
            os.chown(path, uid, postdrop)
            os.chmod(path, mode)
        (self.queue_dir / "pid").mkdir(mode=0o755, exist_ok=True)
        if self.master_pid is None:
            (self.queue_dir / "quick-start").touch()

    # -- lifecycle -----------------------------------------------------------
    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise PostfixError(
                f"postfix {' '.join(args)} exited {proc.returncode}: "
                f"{proc.stdout}{proc.stderr}\n--- maillog tail ---\n{self.log_tail()}"
            )
        return proc

    def start(self, timeout: float = 30.0, attempts: int = 3) -> PostfixInstance:
        """Write the config, start master, wait for smtpd's 220 greeting."""
        for attempt in range(attempts):
            self.port = free_port(self.host)
            self._write_config()
            # No separate `postfix check`: start runs the fatal checks anyway
            # and the full check costs ~2 s per instance.
            self._postfix("start")
            self.master_pid = self._read_master_pid()
            try:
                wait_for_banner(self.host, self.port, timeout)
                return self
            except TimeoutError:
                # Most likely someone took the port between our probe and
                # master's bind; the maillog says so. Retry with a new port.
                log = self.log_text()
                self.stop(remove=False)
                if "Address already in use" not in log or attempt == attempts - 1:
                    raise PostfixError(
                        f"Postfix smtpd on {self.host}:{self.port} never greeted:\n"
                        f"{self.log_tail()}"
                    ) from None
        raise AssertionError("unreachable")

    def _read_master_pid(self) -> int | None:
        pid_file = self.queue_dir / "pid" / "master.pid"
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def running(self) -> bool:
        return self._postfix("status", check=False).returncode == 0

    def reload(self) -> None:
        """Rewrite main.cf/master.cf from `options` and `postfix reload`.

        Asynchronous, as in production: master rereads its files and running
        smtpd processes finish at their convenience (postfix(1) "reload"), so
        an idle old smtpd may still take the next connection. Returns once
        master logged the reload. Use `restart()` when a test needs the new
        settings on the very next connection.
        """
        self._write_config()
        before = self.log_text().count("reload -- version")
        self._postfix("reload")
        deadline = time.monotonic() + 30
        while self.log_text().count("reload -- version") <= before:
            if time.monotonic() >= deadline:
                raise PostfixError(f"master never logged the reload:\n{self.log_tail()}")
            time.sleep(0.02)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop and start on the same port and queue: new settings apply at once."""
        self._postfix("stop", check=False)
        self._kill_leftovers()
        self._write_config()
        self._postfix("start")
        self.master_pid = self._read_master_pid()
        wait_for_banner(self.host, self.port, timeout)

    def set_main(self, *, restart: bool = True, **params: str) -> None:
        """Change main.cf parameters, then restart (default) or reload."""
        merged = dict(self.options.main_cf)
        merged.update(params)
        self.options.main_cf = merged
        if restart:
            self.restart()
        else:
            self.reload()

    def stop(self, remove: bool = True) -> None:
        """Stop master and every child it left; never raises. Then rm the tree."""
        if self.config_dir.joinpath("main.cf").exists():
            try:
                self._postfix("stop", check=False)
            except subprocess.TimeoutExpired:
                pass
        self._kill_leftovers()
        self.master_pid = None
        if remove and self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """SIGKILL any process still in master's session (master calls setsid)."""
        if self.master_pid is None:
            return
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat_fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # fields after the command: state ppid pgrp session ...
            if int(stat_fields[3]) == self.master_pid:
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection ------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, needle: str | re.Pattern[str], timeout: float = 30.0) -> str:
        """Poll the maillog (postlogd writes it asynchronously) for a line."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            for line in self.log_text().splitlines():
                if needle.search(line) if isinstance(needle, re.Pattern) else needle in line:
                    return line
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{needle!r} not in maillog within {timeout}s:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def queue(self) -> list[dict[str, object]]:
        """Every queued message, as `postqueue -j` describes it (postqueue(1))."""
        proc = subprocess.run(
            [POSTQUEUE, "-c", str(self.config_dir), "-j"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def hold_queue(self) -> list[str]:
        """Queue IDs of messages in the hold queue (quarantine, HOLD actions)."""
        return [str(m["queue_id"]) for m in self.queue() if m.get("queue_name") == "hold"]

    def wait_for_hold(self, count: int = 1, timeout: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            held = self.hold_queue()
            if len(held) >= count:
                return held
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(held)} of {count} messages held:\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def flush(self) -> None:
        """Attempt delivery of every deferred message now (`postqueue -f`)."""
        subprocess.run(
            [POSTQUEUE, "-c", str(self.config_dir), "-f"],
            capture_output=True,
            timeout=60,
            check=True,
        )

    def release_hold(self, queue_id: str = "ALL") -> None:
        subprocess.run(
            [POSTSUPER, "-c", str(self.config_dir), "-H", queue_id],
            capture_output=True,
            timeout=60,
            check=True,
        )

    # -- sending -------------------------------------------------------------
    def send(
        self,
        mail_from: str = "sender@example.org",
        rcpt_to: Iterable[str] | str = ("rcpt@example.net",),
        data: bytes | None = None,
        *,
        helo: str = "client.test",
        xclient: Xclient | None = None,
        rcpt_only: bool = False,
        timeout: float = 60.0,
    ) -> SmtpResult:
        """One SMTP transaction to this instance's smtpd (see `smtp_send`).

        Without `data` a small message is made up; `rcpt_only` stops after RCPT.
        """
        rcpts = [rcpt_to] if isinstance(rcpt_to, str) else list(rcpt_to)
        if rcpt_only:
            data = None
        elif data is None:
            data = make_message(mail_from=mail_from, to=rcpts[0] if rcpts else "")
        return smtp_send(
            self.host,
            self.port,
            mail_from,
            rcpts,
            data,
            helo=helo,
            xclient=xclient,
            timeout=timeout,
        )
