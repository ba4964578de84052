"""Run as a service user: bind as root, drop before any mail, sockets for
Postfix's group only, and start-up problems that say what to fix (exit 78).

A system user `pwtest` is created for these tests (useradd; an existing one
is reused), with the group postfix as a supplementary group, as
deploy/sysusers.d does for `postwarden`.
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import hashlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from postwarden import preflight, privileges
from postwarden.config.load import load_config_text
from postwarden.config.sections.privileges import PrivilegeSettings
from postwarden.privileges import Identity
from tests.conftest import REPO
from tests.harness.ports import free_port, shared_tempdir
from tests.harness.services import (
    ServiceConfig,
    ServiceProcess,
    postwarden_argv,
    service_argv,
    write_config,
)
from tests.integration.test_supervisor import connects, wait_until

USER = "pwtest"
NOBODY = 65534
EX_CONFIG = 78


@pytest.fixture(scope="module")
def service_user() -> pwd.struct_passwd:
    """The system user the services drop to (created once, kept)."""
    if shutil.which("useradd") is None:
        pytest.fail("useradd is missing: apt-get install passwd")
    done = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
         "/nonexistent", "--shell", "/usr/sbin/nologin", USER],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode not in (0, 9):  # 9: the user exists already
        pytest.fail(f"useradd {USER} failed: {done.stderr}")
    subprocess.run(["usermod", "-a", "-G", "postfix", USER], check=True)
    return pwd.getpwnam(USER)


@pytest.fixture(scope="module")
def postwarden_cmd(service_user: pwd.struct_passwd) -> list[str]:
    """The `postwarden` command, from a Python the service user can read.

    On a fresh Debian machine that is the checkout's .venv (Debian's
    python3). A .venv built on an interpreter the user cannot read (pyenv
    under /root, 0700) is refused at start, rightly (see
    privileges.python_problems); the tests then use a venv of Debian's
    python3 with this checkout installed editable, built once under /var/tmp.
    """
    ident = Identity(
        USER, service_user.pw_uid, service_user.pw_gid, (grp.getgrnam("postfix").gr_gid,)
    )
    if not privileges.python_problems(ident):
        return postwarden_argv()
    system_python = "/usr/bin/python3"
    if not os.path.exists(system_python):
        pytest.fail("python3 is missing: apt-get install python3 python3-venv")
    stamp = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    venv = Path("/var/tmp") / f"postwarden-test-venv-{stamp}"
    if not (venv / ".installed").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([system_python, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "-e", str(REPO)],
            check=True,
            capture_output=True,
        )
        (venv / ".installed").touch()
    return [str(venv / "bin" / "postwarden")]


@pytest.fixture
def shared() -> Iterator[Path]:
    """Config, sockets and state in a directory every user may traverse."""
    path = shared_tempdir("pw-p-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def config(
    shared: Path, *, privileges: dict[str, Any], overrides: dict[str, Any] | None = None
) -> ServiceConfig:
    # Embedded Redis under state_dir (run as the service user too).
    cfg = write_config(
        shared,
        shared,
        "unused",
        milters=("noop",),
        overrides={"redis": {"url": None}, "privileges": privileges, **(overrides or {})},
    )
    os.chmod(cfg.path, 0o644)
    return cfg


@contextlib.contextmanager
def notify_socket(shared: Path) -> Iterator[tuple[socket.socket, str]]:
    """A $NOTIFY_SOCKET the dropped service can still write to."""
    path = str(shared / f"notify-{os.urandom(4).hex()}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        os.chmod(path, 0o666)
        s.settimeout(30)
        yield s, path


def wait_ready(notify: socket.socket) -> None:
    """sd_notify READY=1: sent after the socket is granted and root dropped."""
    while b"READY=1" not in notify.recv(4096).split(b"\n"):
        pass


def start(
    cmd: list[str], cfg: ServiceConfig, kind: str, name: str | None, shared: Path
) -> ServiceProcess:
    label = name or kind
    with notify_socket(shared) as (notify, path):
        service = ServiceProcess(
            argv=[*cmd, *service_argv(cfg, kind, name)[len(postwarden_argv()) :]],
            socket=cfg.socket(label),
            log_path=shared / f"{label}.log",
            env={"NOTIFY_SOCKET": path},
        ).start()
        wait_ready(notify)
    return service


def proc_ids(pid: int) -> tuple[list[int], list[int], set[int]]:
    """(real, effective, saved, fs) uids and gids, and supplementary groups,
    from /proc/PID/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return (
        [int(v) for v in fields["Uid"]],
        [int(v) for v in fields["Gid"]],
        {int(v) for v in fields["Groups"]},
    )


def connect_as(uid: int, gid: int, groups: list[int], path: str) -> int:
    """connect(2) to `path` from a forked child running as uid/gid; returns
    0 when connected, else the errno."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 100
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
            code = 0
        except OSError as exc:
            code = exc.errno or 101
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def socket_path(cfg: ServiceConfig, service: str) -> str:
    return cfg.socket(service).removeprefix("unix:")


def test_policyd_started_as_root_drops_to_the_service_user(
    service_user: pwd.struct_passwd, postwarden_cmd: list[str], shared: Path
) -> None:
    # Given a config naming the service user, when policyd starts as root
    cfg = config(shared, privileges={"user": USER})
    service = start(postwarden_cmd, cfg, "policyd", None, shared)
    try:
        postfix_gid = grp.getgrnam("postfix").gr_gid
        # Then every uid and gid of the process is the service user's
        uids, gids, groups = proc_ids(service.pid)
        assert uids == [service_user.pw_uid] * 4
        assert gids == [service_user.pw_gid] * 4
        assert postfix_gid in groups and 0 not in groups
        # and its socket is the service user's, group postfix, 0660
        path = socket_path(cfg, "policyd")
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
            service_user.pw_uid,
            postfix_gid,
            0o660,
        )
        # Postfix (user postfix, group postfix) connects; uid 65534 cannot.
        pf = pwd.getpwnam("postfix")
        assert connect_as(pf.pw_uid, pf.pw_gid, [], path) == 0
        assert connect_as(NOBODY, NOBODY, [], path) == 13  # EACCES
        # The embedded redis-server runs as the service user too, on a
        # unix socket in a 0700 directory, with no TCP port.
        redis_dir = Path(cfg.data["state_dir"]) / "redis"
        st = os.stat(redis_dir)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (service_user.pw_uid, 0o700)
        redis_pids = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and str(redis_dir) in _cmdline(p) and "redis-server" in _cmdline(p)
        ]
        assert redis_pids, "no embedded redis-server found"
        assert proc_ids(redis_pids[0])[0] == [service_user.pw_uid] * 4
        assert tcp_sockets(redis_pids[0]) == set()
    finally:
        service.stop()
    assert "running as user pwtest" in service.log_text()


def tcp_sockets(pid: int) -> set[int]:
    """Socket inodes of `pid` that are TCP sockets (/proc/net/tcp, tcp6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    tcp = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            tcp.add(int(line.split()[9]))
    return inodes & tcp


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_milter_drops_every_thread_before_postfix_can_connect(
    service_user: pwd.struct_passwd, postwarden_cmd: list[str], shared: Path
) -> None:
    cfg = config(shared, privileges={"user": USER})
    service = start(postwarden_cmd, cfg, "milter", "noop", shared)
    try:
        # libmilter's listener is a thread: glibc's setuid covers all of them.
        tasks = list(Path(f"/proc/{service.pid}/task").iterdir())
        assert len(tasks) > 1
        for task in tasks:
            status = (task / "status").read_text()
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert uid_line.split()[1:] == [str(service_user.pw_uid)] * 4
        path = socket_path(cfg, "noop")
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == grp.getgrnam("postfix").gr_gid
        assert connect_as(NOBODY, NOBODY, [], path) == 13
    finally:
        service.stop()


def test_started_as_the_service_user_it_runs_as_is(
    service_user: pwd.struct_passwd, postwarden_cmd: list[str], shared: Path
) -> None:
    os.chown(shared, service_user.pw_uid, service_user.pw_gid)
    cfg = config(shared, privileges={"user": USER})
    argv = [*postwarden_cmd, "policyd", "-c", str(cfg.path)]
    ids: dict[str, Any] = {
        "user": service_user.pw_uid,
        "group": service_user.pw_gid,
        "extra_groups": [grp.getgrnam("postfix").gr_gid],
    }
    log = shared / "as-user.log"
    with notify_socket(shared) as (notify, notify_path), log.open("wb") as fh:
        proc = subprocess.Popen(
            argv,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "HOME": str(shared), "NOTIFY_SOCKET": notify_path},
            start_new_session=True,
            **ids,
        )
        try:
            wait_ready(notify)
        except TimeoutError:
            proc.kill()
            raise AssertionError(f"no READY=1:\n{log.read_text()}") from None
    path = socket_path(cfg, "policyd")
    try:
        assert proc.poll() is None, log.read_text()
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
            service_user.pw_uid,
            grp.getgrnam("postfix").gr_gid,
            0o660,
        )
        assert proc_ids(proc.pid)[0] == [service_user.pw_uid] * 4
    finally:
        proc.terminate()
        proc.wait(30)


def run_until_exit(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=60, check=False)


def test_root_is_refused_unless_allowed(shared: Path) -> None:
    cfg = config(shared, privileges={"user": None, "allow_root": False})
    done = run_until_exit(service_argv(cfg, "policyd"))
    assert done.returncode == EX_CONFIG
    assert "refusing to run as root" in done.stderr
    assert "privileges.allow_root: true" in done.stderr
    assert not os.path.exists(socket_path(cfg, "policyd"))


def test_missing_user_says_how_to_create_it(shared: Path) -> None:
    cfg = config(shared, privileges={"user": "pw-no-such-user"})
    done = run_until_exit([*postwarden_argv(), "run", "-c", str(cfg.path)])
    assert done.returncode == EX_CONFIG
    assert "user 'pw-no-such-user' does not exist" in done.stderr
    assert "systemd-sysusers" in done.stderr


def test_socket_in_a_missing_directory_says_how_to_create_it(shared: Path) -> None:
    missing = shared / "nowhere"
    cfg = config(
        shared,
        privileges={"user": None, "allow_root": True},
        overrides={"policyd": {"socket": f"unix:{missing}/policy.sock"}},
    )
    done = run_until_exit(service_argv(cfg, "policyd"))
    assert done.returncode == EX_CONFIG
    assert f"policyd.socket: socket directory {missing} does not exist" in done.stderr
    assert f"install -d -o postwarden -g postfix -m 0750 {missing}" in done.stderr


def test_socket_directory_postfix_cannot_traverse_is_refused(shared: Path) -> None:
    closed = shared / "closed"
    closed.mkdir(mode=0o700)
    cfg = config(
        shared,
        privileges={"user": None, "allow_root": True},
        overrides={"milters": {"noop": {"socket": f"unix:{closed}/noop.sock"}}},
    )
    done = run_until_exit(service_argv(cfg, "milter", "noop"))
    assert done.returncode == EX_CONFIG
    assert f"milters.noop.socket: group postfix cannot reach {closed}/noop.sock" in done.stderr
    assert f"{closed} is drwx------ root:root" in done.stderr


def test_metrics_port_in_use_is_a_startup_error(shared: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = config(
            shared,
            privileges={"user": None, "allow_root": True},
            overrides={"metrics": {"enabled": True, "listen": f"127.0.0.1:{port}"}},
        )
        done = run_until_exit([*postwarden_argv(), "run", "-c", str(cfg.path)])
    assert done.returncode == EX_CONFIG
    assert f"metrics.listen: 127.0.0.1:{port} is already in use" in done.stderr


def test_run_as_root_keeps_the_supervisor_and_drops_every_child(
    service_user: pwd.struct_passwd, postwarden_cmd: list[str], shared: Path
) -> None:
    port = free_port()
    cfg = config(
        shared,
        privileges={"user": USER},
        overrides={"metrics": {"enabled": True, "listen": f"127.0.0.1:{port}"}},
    )
    log = shared / "run.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [*postwarden_cmd, "run", "-c", str(cfg.path)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
    try:
        for service in ("policyd", "noop"):
            path = socket_path(cfg, service)
            wait_until(lambda p=path: connects(p) or proc.poll() is not None, path)  # type: ignore[misc]
            assert proc.poll() is None, log.read_text()
        children = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _ppid(p) == proc.pid
        ]
        assert len(children) >= 4  # redis-server, policyd, milter noop, metrics
        for child in children:
            wait_until(lambda c=child: proc_ids(c)[0][0] != 0, f"child {child} dropping root")  # type: ignore[misc]
            assert proc_ids(child)[0] == [service_user.pw_uid] * 4
        assert proc_ids(proc.pid)[0][1] == 0  # the supervisor, like Postfix's master
        # /metrics answers, from a dropped child: the root supervisor listens
        # on no TCP port
        wait_until(lambda: _metrics_answer(port), "/metrics")
        assert tcp_sockets(proc.pid) == set()
        [server] = [c for c in children if "metrics" in _cmdline(Path(f"/proc/{c}"))]
        assert tcp_sockets(server)
        assert proc_ids(server)[0] == [service_user.pw_uid] * 4
        # A reload reaches the dropped children: they re-read the supervisor's
        # running.yaml as the service user (it was root-only once, and every
        # child refused the reload with "Permission denied")
        proc.send_signal(signal.SIGHUP)
        for what in ("milter noop reloaded", "policyd reloaded"):
            wait_until(lambda w=what: w in log.read_text(), what)  # type: ignore[misc]
        assert "reload refused" not in log.read_text()
    finally:
        proc.terminate()
        proc.wait(60)
    assert proc.returncode == 0, log.read_text()


def _metrics_answer(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return b"postwarden_supervisor_restarts_total" in r.read()
    except OSError:
        return False


def _ppid(proc: Path) -> int:
    try:
        stat_line = (proc / "stat").read_text()
    except OSError:
        return -1
    return int(stat_line.rpartition(")")[2].split()[1])


def test_a_python_the_service_user_cannot_read_is_named(shared: Path) -> None:
    # Given a tree the service user may not enter (as pyenv under /root is)
    closed = shared / "closed-python"
    (closed / "lib").mkdir(parents=True)
    (closed / "lib" / "os.py").write_text("")
    os.chmod(closed, 0o700)
    nobody = Identity("nobody", NOBODY, NOBODY, ())
    # Then the first directory it cannot search is reported
    assert privileges.unreadable(str(closed / "lib" / "os.py"), nobody) == str(closed)
    os.chmod(closed, 0o755)
    assert privileges.unreadable(str(closed / "lib" / "os.py"), nobody) is None


def test_dropping_root_keeps_the_parent_death_signal(service_user: pwd.struct_passwd) -> None:
    # A supervisor may ask the kernel to stop its children when it dies
    # (PR_SET_PDEATHSIG); setuid clears that, so drop() sets it again.
    settings = PrivilegeSettings(user=USER)
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 100
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)
            privileges.drop(settings)
            sig = ctypes.c_int(0)
            libc.prctl(2, ctypes.byref(sig), 0, 0, 0)
            ok = os.getuid() == service_user.pw_uid and sig.value == signal.SIGTERM
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_files_the_service_user_could_not_reload_are_named_at_start(
    service_user: pwd.struct_passwd, postwarden_cmd: list[str], shared: Path
) -> None:
    # Given a header_checks file and a config only root may read
    rules = shared / "header_checks"
    rules.write_text("/^Subject: test/ REJECT no\n")
    os.chmod(rules, 0o600)
    cfg = config(
        shared,
        privileges={"user": USER},
        overrides={"milters": {"headers": {"enabled": True, "header_checks": [str(rules)]}}},
    )
    os.chmod(cfg.path, 0o600)
    # When root starts the milter, which drops to the service user
    done = run_until_exit([*postwarden_cmd, "milter", "headers", "-c", str(cfg.path)])
    # Then it refuses before serving and names each file with the fix
    assert done.returncode == EX_CONFIG, done.stderr
    assert f"config file: {cfg.path} is not readable by user {USER}" in done.stderr
    assert f"milters.headers.header_checks[0]: {rules} is not readable by user {USER}" in (
        done.stderr
    )
    assert f"chgrp {USER} {rules}" in done.stderr
    assert not os.path.exists(socket_path(cfg, "headers"))
    # And once the group may read them, that complaint is gone
    for path in (rules, cfg.path):
        os.chown(path, 0, service_user.pw_gid)
        os.chmod(path, 0o640)
    ident = Identity(USER, service_user.pw_uid, service_user.pw_gid, ())
    settings = load_config_text(Path(cfg.path).read_text(), str(cfg.path))
    assert preflight.readable_files(settings, str(cfg.path), ident) == []
