"""The settings tree: one frozen dataclass per YAML block.

`deploy/postwarden.yaml` documents every field here (a qa test keeps the two
in step). Defaults are the safe choice for a fresh install; the comments in
that file say why each default is what it is.

Service-specific blocks live beside this module (`sections/`), one file per
service, so each check owns its settings without touching the others.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from postwarden.config.errors import FieldProblem, Finding
from postwarden.config.fields import setting
from postwarden.config.locations import Locations
from postwarden.config.sections.attachments import AttachmentsMilterSettings
from postwarden.config.sections.common import MilterSettings, Mode, OnError
from postwarden.config.sections.dkim import DkimMilterSettings
from postwarden.config.sections.headers import HeadersMilterSettings
from postwarden.config.sections.policyd import PolicydSettings
from postwarden.config.sections.privileges import PrivilegeSettings
from postwarden.config.sections.spam import SpamMilterSettings
from postwarden.config.units import Duration, Network, RedisUrl, SocketAddress

__all__ = [
    "DnsSettings",
    "LogFormat",
    "LogLevel",
    "LogSettings",
    "LogTarget",
    "MetricsSettings",
    "MilterSettings",
    "MiltersSettings",
    "Mode",
    "OnError",
    "RedisSettings",
    "SentinelSettings",
    "Settings",
]


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class LogTarget(StrEnum):
    STDERR = "stderr"
    SYSLOG = "syslog"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class SentinelSettings:
    hosts: tuple[str, ...] = setting(factory=tuple, doc="host:port of each Sentinel")
    service: str = setting("mymaster", doc="the monitored master's name")


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: RedisUrl | None = setting(None, doc="redis://, rediss://, unix://; none = embedded server")
    prefix: str = setting("pw:", doc="prefix of every key postwarden writes")
    cluster: bool = setting(False, doc="url names a Redis Cluster node")
    sentinel: SentinelSettings | None = setting(None, doc="use Sentinel instead of url")
    timeout: Duration = setting(Duration(1.0), min=0.01, doc="socket timeout per command")

    def validate_node(self) -> list[Finding]:
        # The url itself is checked (and shown masked) by its type, RedisUrl.
        problems: list[Finding] = []
        if self.sentinel is not None and not self.sentinel.hosts:
            problems.append(FieldProblem("sentinel.hosts", "list at least one host:port"))
        if self.sentinel is not None:
            for i, host in enumerate(self.sentinel.hosts):
                problem = host_port_problem(host, default_port=True)
                if problem:
                    problems.append(FieldProblem(f"sentinel.hosts[{i}]", problem))
        if self.cluster and self.sentinel is not None:
            problems.append(FieldProblem("cluster", "cluster and sentinel cannot both be set"))
        return problems


def host_port_problem(text: str, default_port: bool = False) -> str | None:
    """None when `text` is host:port (or [v6]:port) with a port 1-65535."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, ""
    if host.startswith("[") != host.endswith("]") or not host.strip("[]"):
        return f"expected host:port, got {text!r}"
    if not port and default_port:
        return None
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"port must be 1-65535 in {text!r}"
    return None


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: LogLevel = setting(LogLevel.INFO)
    format: LogFormat = setting(LogFormat.TEXT)
    target: LogTarget = setting(LogTarget.STDERR, doc="stderr (journald reads it) or syslog")


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    enabled: bool = setting(False)
    listen: str = setting("127.0.0.1:9900", doc="host:port of the /metrics endpoint")

    def validate_node(self) -> list[Finding]:
        problem = host_port_problem(self.listen)
        return [FieldProblem("listen", problem)] if problem else []


@dataclass(frozen=True, slots=True)
class DnsSettings:
    nameservers: tuple[str, ...] = setting(factory=tuple, doc="IP or IP:PORT; empty = system")
    timeout: Duration = setting(Duration(5.0), min=0.1, max=60)

    def validate_node(self) -> list[Finding]:
        problems: list[Finding] = []
        for i, ns in enumerate(self.nameservers):
            host, port = _split_ns(ns)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                problems.append(
                    FieldProblem(f"nameservers[{i}]", f"{ns!r} is not an IP address or IP:PORT")
                )
            if port is not None and not 0 < port < 65536:
                problems.append(FieldProblem(f"nameservers[{i}]", f"port out of range in {ns!r}"))
        return problems

    def parsed_nameservers(self) -> list[tuple[str, int]]:
        return [(h, p or 53) for h, p in (_split_ns(ns) for ns in self.nameservers)]


def _split_ns(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port) if port.isdigit() else -1
    return text, None


def _milter(name: str) -> MilterSettings:
    return MilterSettings(socket=_sock(name))


def _sock(name: str) -> SocketAddress:
    return SocketAddress("unix", path=f"/var/spool/postfix/postwarden/{name}.sock")


@dataclass(frozen=True, slots=True)
class MiltersSettings:
    headers: HeadersMilterSettings = setting(
        factory=lambda: HeadersMilterSettings(socket=_sock("headers"))
    )
    attachments: AttachmentsMilterSettings = setting(
        factory=lambda: AttachmentsMilterSettings(socket=_sock("attachments"))
    )
    dkim: DkimMilterSettings = setting(factory=lambda: DkimMilterSettings(socket=_sock("dkim")))
    spam: SpamMilterSettings = setting(factory=lambda: SpamMilterSettings(socket=_sock("spam")))
    # Diagnostic: accepts everything and stamps one header; never started by
    # `postwarden run` unless enabled. Used to measure the adapter's cost.
    noop: MilterSettings = setting(
        factory=lambda: MilterSettings(enabled=False, socket=_sock("noop"))
    )

    def by_name(self) -> dict[str, MilterSettings]:
        """Every milter block by its YAML key (one field per milter above)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


DEFAULT_TRUSTED: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


@dataclass(frozen=True, slots=True)
class Settings:
    redis: RedisSettings = setting(factory=RedisSettings)
    state_dir: str = setting("/var/lib/postwarden", doc="embedded Redis, metrics, keys")
    log: LogSettings = setting(factory=LogSettings)
    metrics: MetricsSettings = setting(factory=MetricsSettings)
    dns: DnsSettings = setting(factory=DnsSettings)
    trusted_networks: tuple[Network, ...] = setting(DEFAULT_TRUSTED)
    milters: MiltersSettings = setting(factory=MiltersSettings)
    policyd: PolicydSettings = setting(factory=PolicydSettings)
    privileges: PrivilegeSettings = setting(factory=PrivilegeSettings)
    # Where each key was written (not a YAML key: the loader fills it in).
    _locations: Locations = dataclasses.field(default_factory=Locations, compare=False, repr=False)

    @property
    def locations(self) -> Locations:
        """Key path -> file:line of the loaded file, for problems found after loading."""
        return self._locations
