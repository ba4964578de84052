"""A private Dovecot (IMAP + Pigeonhole) from a temp dir, for the Junk-loop tests.

One passwd-file user with a Maildir, IMAP on a free loopback port, `ssl =
no`, and the shipped contrib/dovecot files installed with their paths
pointed into the temp dir. As root the mail user is `nobody`, so the Sieve
pipe runs `postwarden learn` unprivileged, as on a real server; as another
user everything runs as that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from tests.harness.ports import free_port, make_traversable

DOVECOT = "/usr/sbin/dovecot"
SIEVEC = "/usr/bin/sievec"
CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "dovecot"
PASSWORD = "secret-pw"


def require_dovecot() -> None:
    for path, pkg in ((DOVECOT, "dovecot-imapd"), (SIEVEC, "dovecot-sieve")):
        if not os.path.exists(path):
            raise RuntimeError(f"{path} missing: apt-get install {pkg} (./dev test does)")


@dataclass
class DovecotInstance:
    root: Path
    port: int
    user: str
    uid: int
    gid: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def maildir(self) -> Path:
        return self.root / "home" / self.user / "Maildir"

    @property
    def log(self) -> str:
        p = self.root / "dovecot.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self, timeout: float = 30.0) -> None:
        conf = self.root / "dovecot.conf"
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"dovecot did not start: {err}\n{self.log}")
            time.sleep(0.05)  # readiness poll

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _install_contrib(root: Path, postwarden: str, learn_config: Path) -> None:
    sieve = root / "sieve"
    pipe = root / "sieve-pipe"
    sieve.mkdir()
    pipe.mkdir()
    for name in ("postwarden-learn-spam.sieve", "postwarden-learn-ham.sieve",
                 "postwarden-junk.sieve"):  # fmt: skip
        shutil.copy(CONTRIB / name, sieve / name)
    wrapper = (CONTRIB / "postwarden-learn").read_text()
    assert "POSTWARDEN=/usr/bin/postwarden" in wrapper
    assert "CONFIG=/etc/postwarden/learn.yaml" in wrapper
    wrapper = wrapper.replace("POSTWARDEN=/usr/bin/postwarden", f"POSTWARDEN={postwarden}")
    wrapper = wrapper.replace("CONFIG=/etc/postwarden/learn.yaml", f"CONFIG={learn_config}")
    (pipe / "postwarden-learn").write_text(wrapper)
    os.chmod(pipe / "postwarden-learn", 0o755)
    conf = (CONTRIB / "90-postwarden-imapsieve.conf").read_text()
    conf = conf.replace("/usr/lib/dovecot/sieve-pipe", str(pipe))
    conf = conf.replace("/etc/dovecot/sieve", str(sieve))
    (root / "90-postwarden-imapsieve.conf").write_text(conf)


def postwarden_for(uid: int, gid: int, root: Path, postwarden: str) -> str:
    """A `postwarden` the mail user can execute.

    The checkout's own entry point when it can (a fresh Debian machine's
    venv on /usr/bin/python3). When the venv's interpreter lives where the
    mail user cannot go (a pyenv Python under /root), a two-line launcher
    runs the same checkout and site-packages on the system python3 of the
    same minor version; redis-py wants `async_timeout` below 3.11.3, whose
    `timeout` asyncio has had since 3.11.0, so a stub module maps it.
    """
    if _runs_as(postwarden, uid, gid):
        return postwarden
    system = "/usr/bin/python3"
    repo = Path(__file__).resolve().parents[2]
    site = sysconfig.get_paths()["purelib"]
    shim = root / "pyshim"
    shim.mkdir(exist_ok=True)
    (shim / "async_timeout.py").write_text("from asyncio import timeout  # noqa: F401\n")
    launcher = root / "postwarden"
    launcher.write_text(
        f'#!/bin/sh\nPYTHONPATH={repo}:{site}:{shim} exec {system} -m postwarden "$@"\n'
    )
    os.chmod(launcher, 0o755)
    make_traversable(shim)
    if not _runs_as(str(launcher), uid, gid):
        raise RuntimeError(
            f"the mail user (uid {uid}) can run neither {postwarden} nor {system} with this "
            "checkout: make the checkout and its venv interpreter readable by others"
        )
    return str(launcher)


def _runs_as(exe: str, uid: int, gid: int) -> bool:
    try:
        out = subprocess.run([exe, "--version"], user=uid, group=gid, extra_groups=[],
                             capture_output=True, timeout=60, cwd="/")  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


def make_dovecot(root: Path, postwarden: str, learn_config: Path) -> DovecotInstance:
    require_dovecot()
    root.mkdir()
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        mail_user = pwd.getpwnam("nobody")
        internal, login = "dovecot", "dovenull"
    else:
        mail_user = pwd.getpwuid(os.getuid())
        internal = login = mail_user.pw_name
    uid, gid = mail_user.pw_uid, mail_user.pw_gid
    postwarden = postwarden_for(uid, gid, root, postwarden)
    user = "alice@example.org"
    for sub in ("run", f"home/{user}/Maildir"):
        (root / sub).mkdir(parents=True)
    for sub in ("cur", "new", "tmp"):
        (root / "home" / user / "Maildir" / sub).mkdir()
    _install_contrib(root, postwarden, learn_config)
    if os.geteuid() == 0:
        for dirpath, _, files in os.walk(root / "home"):
            os.chown(dirpath, uid, gid)
            for f in files:
                os.chown(Path(dirpath) / f, uid, gid)
    make_traversable(root)
    (root / "passwd").write_text(f"{user}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{root}/home/{user}::\n")
    os.chmod(root / "passwd", 0o644)
    port = free_port()
    (root / "dovecot.conf").write_text(f"""
base_dir = {root}/run
state_dir = {root}/run
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = {min(uid, 500)}

first_valid_gid = 0
mail_location = maildir:~/Maildir
mail_privileged_group =
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/passwd
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Junk {{
    special_use = \\Junk
    auto = create
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = create
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
!include {root}/90-postwarden-imapsieve.conf
""")
    # Global scripts are compiled ahead, as an admin does with sievec.
    for script in (root / "sieve").glob("*.sieve"):
        out = subprocess.run([SIEVEC, "-c", str(root / "dovecot.conf"), str(script)],
                             capture_output=True, text=True)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"sievec {script.name}: {out.stderr}")
    return DovecotInstance(root, port, user, uid, gid)
