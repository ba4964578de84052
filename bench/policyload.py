"""Policy-protocol load generator shared by the policy benchmarks.

Each connection behaves like one Postfix smtpd process: it sends one request,
waits for the `action=` reply, then sends the next (no pipelining), over a
connection it keeps open. Latency is per request; throughput is completed
requests over the wall time of the whole run. Runs are bounded by a request
count, so every benchmark stops by itself.

Not a test: figures depend on the machine and are reported as ratios against
a baseline measured in the same run (see bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class LoadResult:
    connections: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    actions: dict[str, int]

    def row(self, label: str) -> str:
        return (
            f"{label:<28} conns={self.connections:<3} rps={self.rps:9.0f} "
            f"p50={self.p50_ms:7.3f}ms p99={self.p99_ms:7.3f}ms errors={self.errors}"
        )


async def _open(target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    kind, _, rest = target.partition(":")
    if kind == "unix":
        return await asyncio.open_unix_connection(rest)
    host, _, port = rest.rpartition(":")
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def _worker(
    target: str,
    requests: Sequence[bytes],
    start: int,
    count: int,
    latencies: list[float],
    actions: dict[str, int],
) -> int:
    errors = 0
    reader, writer = await _open(target)
    try:
        for i in range(count):
            req = requests[(start + i) % len(requests)]
            t0 = time.perf_counter()
            writer.write(req)
            await writer.drain()
            try:
                reply = await reader.readuntil(b"\n\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                errors += 1
                writer.close()
                reader, writer = await _open(target)
                continue
            latencies.append(time.perf_counter() - t0)
            verb = reply.split(b"=", 1)[1].split(None, 1)[0].decode(errors="replace")
            actions[verb] = actions.get(verb, 0) + 1
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return errors


async def _run(target: str, requests: Sequence[bytes], connections: int, total: int) -> LoadResult:
    latencies: list[float] = []
    actions: dict[str, int] = {}
    per = max(1, total // connections)
    t0 = time.perf_counter()
    errors = await asyncio.gather(
        *(_worker(target, requests, i * per, per, latencies, actions) for i in range(connections))
    )
    elapsed = time.perf_counter() - t0
    lat = sorted(latencies)
    p50 = statistics.median(lat) * 1000 if lat else 0.0
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0
    done = len(lat)
    return LoadResult(connections, done, elapsed, done / elapsed, p50, p99, sum(errors), actions)


class BenchFailed(SystemExit):
    """The server did not do the work being measured: no figure is printed."""


def verbs(result: LoadResult) -> dict[str, int]:
    """Actions seen, by verb in upper case (servers differ in case)."""
    out: dict[str, int] = {}
    for verb, n in result.actions.items():
        out[verb.upper()] = out.get(verb.upper(), 0) + n
    return out


def require(label: str, result: LoadResult, total: int, expected: dict[str, int]) -> LoadResult:
    """Fail the benchmark unless every request was answered without an error
    and the answers are exactly `expected` (verb -> count)."""
    sent = (total // result.connections) * result.connections
    problems = []
    if result.errors:
        problems.append(f"{result.errors} requests failed")
    if result.requests != sent:
        problems.append(f"{result.requests} of {sent} requests answered")
    if verbs(result) != expected:
        problems.append(f"expected actions {expected}, got {verbs(result)}")
    if problems:
        raise BenchFailed(f"{label} (conns={result.connections}): " + "; ".join(problems))
    return result


def require_all(label: str, result: LoadResult, total: int, verb: str) -> LoadResult:
    """`require` when every request must get the same verb."""
    sent = (total // result.connections) * result.connections
    return require(label, result, total, {verb: sent})


def policyd_config(state: Path, sock: str | Path, policyd: str, extra: str = "") -> str:
    """A postwarden config for a policy benchmark: every milter off, warnings
    only, policyd on `sock`; `policyd` is YAML already indented under
    `policyd:` (two spaces), `extra` top-level YAML (e.g. a `dns:` line)."""
    return (
        f"state_dir: {state}\n"
        "log: {level: warning}\n"
        f"{extra}"
        "milters:\n"
        "  headers: {enabled: false}\n"
        "  attachments: {enabled: false}\n"
        "  dkim: {enabled: false}\n"
        "  spam: {enabled: false}\n"
        "policyd:\n"
        f'  socket: "unix:{sock}"\n'
        f"{policyd}"
    )


def run_load(
    target: str, requests: Sequence[bytes], connections: int, total: int = 5000
) -> LoadResult:
    """Send `total` requests over `connections` connections to a policy server
    at `target` (Postfix notation: unix:/path or inet:host:port)."""
    return asyncio.run(_run(target, requests, connections, total))


def start_policyd(
    config: Path, socket_path: str, log: Path, timeout: float = 20.0
) -> subprocess.Popen[bytes]:
    """Start `postwarden policyd -c config` and wait until `socket_path` accepts."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "postwarden", "policyd", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    wait_for_socket(socket_path, proc, timeout)
    return proc


def wait_for_socket(target: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    kind, _, rest = target.partition(":") if ":" in target else ("unix", "", target)
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        try:
            if kind == "unix":
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(rest)
            else:
                host, _, port = rest.rpartition(":")
                with socket.create_connection((host.strip("[]"), int(port)), 0.5):
                    pass
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{target} did not accept connections within {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rcpt_request(**attrs: str) -> bytes:
    """A RCPT-stage request as Postfix 3.7 sends it, with overrides."""
    base = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": "192.0.2.10",
        "client_name": "mail.example.org",
        "reverse_client_name": "mail.example.org",
        "helo_name": "mail.example.org",
        "sender": "alice@example.org",
        "recipient": "bob@example.net",
        "recipient_count": "0",
        "queue_id": "",
        "instance": "1a2b.5f0c1d2e.3f4a.0",
        "size": "0",
        "etrn_domain": "",
        "stress": "",
        "sasl_method": "",
        "sasl_username": "",
        "sasl_sender": "",
        "ccert_subject": "",
        "ccert_issuer": "",
        "ccert_fingerprint": "",
        "encryption_protocol": "",
        "encryption_cipher": "",
        "encryption_keysize": "0",
        "server_address": "127.0.0.1",
        "server_port": "25",
    }
    base.update(attrs)
    return "".join(f"{k}={v}\n" for k, v in base.items()).encode() + b"\n"
