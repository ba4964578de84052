"""Rate-limit throughput: postwarden vs the DUNNO floor, postfwd and policyd-rate-limit.

    .venv/bin/python bench/ratelimit.py [--requests 10000] [--skip-peers]

Everything runs in one process tree on this machine, in one run, so the
figures compare with each other (absolute numbers depend on the machine):

- DUNNO floor: `bench/policyd_floor.py` (the real policyd, one cheap check).
- postwarden: the real `postwarden policyd` with only `ratelimit` on and
  three active rules every request matches (messages per SASL login per 1m,
  recipients per login per 1d, recipients per client address per 1h; the
  first-time-recipient limit off), embedded Redis, limits high enough that
  every request is counted and answered DUNNO (the normal path).
- postfwd 1.35 (Debian `postfwd`, `postfwd1` binary): the same three limits
  as `rate()` rules (sasl_username/60s, sasl_username/86400s,
  client_address/3600s). postfwd counts requests, i.e. recipients at RCPT;
  it has no once-per-message count. Its `postfwd2` binary keeps rate limits
  in a separate cache daemon and did not enforce them here (checked below),
  so postfwd1, which keeps them in process, is the one measured.
- policyd-rate-limit 1.0.1 (Debian): it limits one key per request (the SASL
  login here), with three windows (60s, 3600s, 86400s) counted per RCPT,
  in its default SQLite backend.

Every server listens on a unix socket under a temp dir. Before measuring,
each is checked to really enforce: with limits of 3, six requests from one
login must give three accepts and three refusals. Each load run uses fresh
message instances, one per request, spread over 50 logins and 200 clients.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.policyd_floor import measure_floor
from bench.policyload import (
    BenchFailed,
    LoadResult,
    policyd_config,
    rcpt_request,
    require_all,
    run_load,
    start_policyd,
    stop,
    verbs,
    wait_for_socket,
)

CONNS = (1, 8, 32)
BIG = 1_000_000_000

POSTWARDEN = """\
  ratelimit:
    enabled: true
    first_time_recipients: {{enabled: false}}
    rules:
      - {{name: user_msgs, key: sasl_username, count: messages, windows: [{{limit: {n}, per: 1m}}]}}
      - {{name: user_rcpts, key: sasl_username, count: recipients,
          windows: [{{limit: {n}, per: 1d}}]}}
      - {{name: net_rcpts, key: client_address, count: recipients,
          windows: [{{limit: {n}, per: 1h}}]}}
"""

POSTFWD = """\
id=RL_USER_1M; sasl_username=~/./; action=rate(sasl_username/{n}/60/450 4.7.1 user limit 1m)
id=RL_USER_1D; sasl_username=~/./; action=rate(sasl_username/{n}/86400/450 4.7.1 user limit 1d)
id=RL_NET_1H; action=rate(client_address/{n}/3600/450 4.7.1 client limit 1h)
"""

POLICYD_RATE_LIMIT = """\
debug: False
user: "root"
group: "root"
pidfile: "{dir}/run/prl.pid"
sqlite_config:
    database: "{dir}/db/db.sqlite3"
backend: 0
SOCKET: "{dir}/sock/policy"
socket_permission: 0666
limits:
    - [{n}, 60]
    - [{n}, 3600]
    - [{n}, 86400]
limits_by_id: {{}}
limit_by_sasl: True
limit_by_sender: False
limit_by_ip: False
limited_networks: []
success_action: "dunno"
fail_action: "defer_if_permit Rate limit reached, retry later"
db_error_action: "dunno"
report: False
delay_to_close: 300
"""

# A server under test: start(limit, dir) -> (socket target, stop function).
Server = Callable[[int, Path], tuple[str, Callable[[], None]]]


def postwarden_server(limit: int, tmp: Path) -> tuple[str, Callable[[], None]]:
    sock = tmp / "pw.sock"
    cfg = tmp / "postwarden.yaml"
    cfg.write_text(policyd_config(tmp / "state", sock, POSTWARDEN.format(n=limit)))
    proc = start_policyd(cfg, str(sock), tmp / "policyd.log")
    return f"unix:{sock}", lambda: stop(proc)


def postfwd_server(limit: int, tmp: Path) -> tuple[str, Callable[[], None]]:
    sock, pidfile, rules = tmp / "postfwd.sock", tmp / "postfwd.pid", tmp / "postfwd.cf"
    rules.write_text(POSTFWD.format(n=limit))
    # postfwd1 daemonizes; --cache=0 turns off its request cache (it would
    # answer repeated requests without evaluating rules).
    subprocess.run(
        ["postfwd1", "--daemon", "-f", str(rules), "--proto=unix", f"--port={sock}",
         f"--pidfile={pidfile}", "--cache=0", "-u", "root", "-g", "root"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_socket(f"unix:{sock}", None, 20)

    def halt() -> None:
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
        _wait_gone(pid)

    return f"unix:{sock}", halt


def policyd_rate_limit_server(limit: int, tmp: Path) -> tuple[str, Callable[[], None]]:
    d = tmp / "prl"
    d.mkdir(exist_ok=True)
    cfg = d / "prl.yaml"
    cfg.write_text(POLICYD_RATE_LIMIT.format(dir=d, n=limit))
    proc = subprocess.Popen(
        ["policyd-rate-limit", "-f", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=(d / "out.log").open("wb"),
    )  # fmt: skip
    wait_for_socket(f"unix:{d / 'sock' / 'policy'}", proc, 20)
    return f"unix:{d / 'sock' / 'policy'}", lambda: stop(proc)


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


@contextmanager
def running(server: Server, limit: int, tmp: Path) -> Iterator[str]:
    tmp.mkdir(parents=True, exist_ok=True)
    target, halt = server(limit, tmp)
    try:
        yield target
    finally:
        halt()


def requests_for(tag: str, n: int) -> list[bytes]:
    return [
        rcpt_request(
            sasl_username=f"user{i % 50}",
            client_address=f"192.0.2.{i % 200}",
            instance=f"{tag}.{i}",
            recipient=f"r{i}@example.net",
        )
        for i in range(n)
    ]


def enforces(label: str, server: Server, tmp: Path) -> dict[str, int]:
    """Six requests from one login against limits of 3: three accepted, three
    refused (each server words its refusal its own way), or the run fails."""
    with running(server, 3, tmp) as target:
        reqs = [rcpt_request(sasl_username="solo", instance=f"s.{i}") for i in range(6)]
        result = run_load(target, reqs, 1, 6)
    seen = verbs(result)
    accepted = seen.get("DUNNO", 0) + seen.get("OK", 0)
    if result.errors or result.requests != 6 or accepted != 3:
        raise BenchFailed(f"{label} does not enforce a limit of 3 in 6 requests: {seen}")
    return seen


def measure(label: str, server: Server, tmp: Path, total: int) -> dict[int, LoadResult | str]:
    """One result per connection count, or why the run failed."""
    out: dict[int, LoadResult | str] = {}
    with running(server, BIG, tmp) as target:
        run_load(target, requests_for("warm", 500), 4, 500)
        for c in CONNS:
            try:
                result = run_load(target, requests_for(f"c{c}", total), c, total)
            except OSError as exc:  # e.g. a listen backlog too small for c clients
                out[c] = f"failed: {exc!r}"
                continue
            # Limits far above the load: every request counted and answered DUNNO.
            out[c] = require_all(label, result, total, "DUNNO")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=10000, help="requests per run")
    ap.add_argument("--skip-peers", action="store_true", help="only the floor and postwarden")
    args = ap.parse_args()
    servers: dict[str, Server] = {"postwarden ratelimit": postwarden_server}
    if not args.skip_peers:
        if shutil.which("postfwd1"):
            servers["postfwd 1.35 (postfwd1)"] = postfwd_server
        if shutil.which("policyd-rate-limit"):
            servers["policyd-rate-limit 1.0.1"] = policyd_rate_limit_server
    out: dict[str, dict[int, object]] = {}
    with tempfile.TemporaryDirectory(prefix="pw-bench-rl-") as d:
        root = Path(d)
        for i, (label, server) in enumerate(servers.items()):
            seen = enforces(label, server, root / f"check{i}")
            print(f"{label:<28} enforces limit 3 of 6: {seen}")
        (root / "floor").mkdir()
        floor: dict[int, LoadResult] = measure_floor(root / "floor", args.requests, CONNS)  # type: ignore[assignment]
        results: dict[str, dict[int, LoadResult | str]] = {"DUNNO floor": dict(floor)}
        for i, (label, server) in enumerate(servers.items()):
            results[label] = measure(label, server, root / f"run{i}", args.requests)
    for label, by_conn in results.items():
        for c, r in by_conn.items():
            if isinstance(r, str):
                print(f"{label:<28} conns={c:<3} {r}")
                out.setdefault(label, {})[c] = r
                continue
            ratio = r.rps / floor[c].rps
            print(f"{r.row(label)}  x{ratio:.2f} of floor")
            out.setdefault(label, {})[c] = {**r.__dict__, "vs_floor": round(ratio, 3)}
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
