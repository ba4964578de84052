"""Unix sockets only Postfix can reach: bind private, then grant the group.

A socket is bound under umask 0177 (0600, owner only: nobody else can
connect in the moment before its owner and mode are set), then given to the
service user and `privileges.socket_group` (default postfix) with mode
0660, as OpenDKIM's and Rspamd's Debian packages do. connect(2) on a unix
socket needs write permission on the socket and search (x) permission on
every directory above it (unix(7)), so before binding we also check that
Postfix can walk down to it.

inet sockets have no file permissions; they are the policy server's and the
milters' own business (loopback by default).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from postwarden import privileges
from postwarden.config.sections.privileges import PrivilegeSettings
from postwarden.config.units import SocketAddress
from postwarden.errors import StartupError

BIND_UMASK = 0o177
GROUP_MODE = 0o660
OWNER_MODE = 0o600


@dataclass(frozen=True, slots=True)
class Client:
    """Who connects: the Postfix user (the user named like the socket
    group, when there is one) and its groups."""

    uid: int | None
    gids: frozenset[int]


def postfix_client(group: str) -> Client:
    gid = privileges.group_id(group, "socket_group")
    gids = {gid}
    uid = None
    try:
        pw = pwd.getpwnam(group)
    except KeyError:
        pass
    else:
        uid = pw.pw_uid
        gids.add(pw.pw_gid)
        gids |= {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}
    return Client(uid, frozenset(gids))


def _can_search(st: os.stat_result, client: Client) -> bool:
    if client.uid is not None and st.st_uid == client.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in client.gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def check_path(key: str, sock: SocketAddress, settings: PrivilegeSettings) -> list[str]:
    """Problems that would stop Postfix from using the unix socket `sock`:
    its directory is missing, or a directory on the way is not searchable
    by the socket group. Each message says what to run."""
    if sock.kind != "unix":
        return []
    directory = Path(sock.path).parent
    if not directory.is_dir():
        owner = settings.user or "postwarden"
        group = settings.socket_group or owner
        return [
            f"{key}: socket directory {directory} does not exist; create it with:"
            f" install -d -o {owner} -g {group} -m 0750 {directory}"
            " (the tmpfiles.d entry in deploy/ does this)"
        ]
    if settings.socket_group is None:
        return []
    try:
        client = postfix_client(settings.socket_group)
    except StartupError as exc:
        return [str(exc)]
    for d in (directory, *directory.parents):
        st = d.stat()
        if not _can_search(st, client):
            return [
                f"{key}: group {settings.socket_group} cannot reach {sock.path}:"
                f" {d} is {stat.filemode(st.st_mode)} {_owner(st)};"
                f" give it the search bit (chmod o+x {d}, or chgrp"
                f" {settings.socket_group} {d} && chmod g+x {d})"
            ]
    return []


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Bind inside this: the new socket is 0600 until `grant` opens it."""
    old = os.umask(BIND_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def grant(sock: SocketAddress, settings: PrivilegeSettings) -> None:
    """Give a freshly bound unix socket to the service user and the socket
    group, mode 0660 (0600 without a socket group)."""
    if sock.kind != "unix":
        return
    ident = privileges.effective(settings)
    uid = ident.uid if ident is not None else -1
    gid = -1
    if settings.socket_group is not None:
        gid = privileges.group_id(settings.socket_group, "socket_group")
    # chmod first, while root still owns it: no CAP_FOWNER needed.
    os.chmod(sock.path, GROUP_MODE if settings.socket_group is not None else OWNER_MODE)
    try:
        os.chown(sock.path, uid, gid)
    except PermissionError as exc:
        if exc.errno != errno.EPERM:
            raise
        me = pwd.getpwuid(os.geteuid()).pw_name
        raise StartupError(
            f"cannot give {sock.path} to group {settings.socket_group}: user {me} is not"
            f" in it; run: usermod -a -G {settings.socket_group} {me}"
        ) from None
