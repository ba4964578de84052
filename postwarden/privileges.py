"""Dropping root: the service user, its groups, and refusing to stay root.

A service started as root binds its socket first (the default policy socket
sits in Postfix's root-only `private/` directory), then calls `drop()`
before it reads any mail: supplementary groups, gid, then uid, in that
order (setuid(2) last, because afterwards the process may no longer change
its groups). glibc applies the change to every thread of the process, so
libmilter's listener thread changes user along with the main thread.

`postwarden run` stays root itself, as Postfix's master and Rspamd's main
process do: it restarts children that must bind again and it parses no
mail. Its children and its embedded redis-server run as the service user.
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
import stat
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from postwarden.config.sections.privileges import PrivilegeSettings
from postwarden.errors import StartupError

log = logging.getLogger("postwarden.privileges")

SYSUSERS_HINT = "create it with: systemd-sysusers /usr/lib/sysusers.d/postwarden.conf"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a service runs as once it has dropped root."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups (the socket group among them)


def group_id(name: str, key: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise StartupError(
            f"privileges.{key}: group {name!r} does not exist; create it"
            f" (groupadd --system {name}) or change privileges.{key}"
        ) from None


def target(settings: PrivilegeSettings) -> Identity | None:
    """The identity to switch to when started as root; None keeps the
    current user. Raises StartupError naming the key when a user or group
    does not exist."""
    if settings.user is None:
        return None
    try:
        pw = pwd.getpwnam(settings.user)
    except KeyError:
        raise StartupError(
            f"privileges.user: user {settings.user!r} does not exist; {SYSUSERS_HINT}"
            " (or set privileges.user to an existing system user)"
        ) from None
    gid = group_id(settings.group, "group") if settings.group else pw.pw_gid
    groups = {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}
    if settings.socket_group:
        groups.add(group_id(settings.socket_group, "socket_group"))
    groups.discard(gid)
    return Identity(pw.pw_name, pw.pw_uid, gid, tuple(sorted(groups)))


def running_as_root() -> bool:
    return os.geteuid() == 0


def effective(settings: PrivilegeSettings) -> Identity | None:
    """The identity the services will have: the target when started as
    root, else None (nothing to switch; the current user stays)."""
    return target(settings) if running_as_root() else None


def check_not_root(settings: PrivilegeSettings) -> None:
    """Refuse to run a service as root unless `allow_root: true`."""
    ident = effective(settings)
    stays_root = running_as_root() and (ident is None or ident.uid == 0)
    if stays_root and not settings.allow_root:
        raise StartupError(
            "refusing to run as root: set privileges.user to a system user"
            " (default postwarden) or, if you really mean it, privileges.allow_root: true"
        )


def drop(settings: PrivilegeSettings) -> Identity | None:
    """Become the service user (when root), then refuse root if not allowed.

    Call after binding, before the first message. Returns the identity
    switched to, or None when the process keeps its user.
    """
    check_not_root(settings)
    ident = effective(settings)
    if ident is None or ident.uid == 0:
        return ident
    deathsig = _parent_death_signal()
    os.setgroups(list(ident.groups))
    os.setresgid(ident.gid, ident.gid, ident.gid)
    os.setresuid(ident.uid, ident.uid, ident.uid)
    if deathsig:  # the kernel clears it when credentials change (prctl(2))
        _set_parent_death_signal(deathsig)
    if os.geteuid() != ident.uid or os.getegid() != ident.gid:  # pragma: no cover - kernel
        raise StartupError(f"could not switch to user {ident.user}")
    os.environ["HOME"] = pwd.getpwuid(ident.uid).pw_dir
    log.info("running as user %s (uid %d, gid %d)", ident.user, ident.uid, ident.gid)
    return ident


def _allowed(st: os.stat_result, ident: Identity, bits: tuple[int, int, int]) -> bool:
    """bits: the (user, group, other) permission bits wanted, e.g. the x bits."""
    if st.st_uid == ident.uid:
        return bool(st.st_mode & bits[0])
    if st.st_gid == ident.gid or st.st_gid in ident.groups:
        return bool(st.st_mode & bits[1])
    return bool(st.st_mode & bits[2])


def unreadable(path: str, ident: Identity) -> str | None:
    """The first directory on the way to `path` (or `path` itself) that
    `ident` cannot search or read, or None when it can."""
    target = os.path.realpath(path)
    search = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
    read = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
    parts = target.split(os.sep)
    for i in range(1, len(parts) + 1):
        d = os.sep.join(parts[:i]) or os.sep
        try:
            st = os.stat(d)
        except OSError:
            return d
        if stat.S_ISDIR(st.st_mode) and not _allowed(st, ident, search):
            return d
    st = os.stat(target)
    return None if _allowed(st, ident, read) else target


def python_problems(ident: Identity | None) -> list[str]:
    """The dropped services keep importing modules (lazily, per message
    kind): Python, its standard library and postwarden's packages must be
    readable by the service user, or mail fails long after the start."""
    if ident is None or ident.uid == 0:
        return []
    import postwarden

    paths = {
        sys.executable,
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["purelib"],
        os.path.dirname(os.path.dirname(os.path.abspath(postwarden.__file__))),
    }
    problems = []
    for path in sorted(paths):
        blocked = unreadable(path, ident)
        if blocked is not None:
            problems.append(
                f"privileges.user: {ident.user} cannot read {path} ({blocked} is closed"
                f" to it); install postwarden with a Python the service user can read"
                " (e.g. Debian's python3 in a venv under /opt), or set privileges.user: null"
                " and start it as that user"
            )
    return problems


_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2


def _prctl() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl


def _parent_death_signal() -> int:
    """The signal this process gets when its parent dies (0: none)."""
    sig = ctypes.c_int(0)
    if _prctl()(_PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0) != 0:
        return 0
    return sig.value


def _set_parent_death_signal(sig: int) -> None:
    _prctl()(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def popen_identity(ident: Identity | None) -> Mapping[str, Any]:
    """subprocess.Popen keyword arguments that start a child as `ident`."""
    if ident is None:
        return {}
    return {"user": ident.uid, "group": ident.gid, "extra_groups": list(ident.groups)}


def own_dir(path: str, ident: Identity | None, mode: int, *, adopt: bool = True) -> None:
    """Create `path` (and parents) for the service user with `mode`.

    adopt=True also hands over a directory that already exists (postwarden's
    own subdirectories: redis/, metrics/); adopt=False leaves an existing
    one alone (state_dir may be a directory the admin chose and owns). As a
    non-root user (ident None) it only creates.
    """
    created = not os.path.isdir(path)
    os.makedirs(path, mode=mode, exist_ok=True)
    if ident is not None and (created or adopt):
        os.chmod(path, mode)  # before chown: root still owns it (no CAP_FOWNER)
        os.chown(path, ident.uid, ident.gid)
