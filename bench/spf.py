"""SPF requests/s at 1, 8 and 32 connections, warm and cold, against the DUNNO floor.

    .venv/bin/python bench/spf.py [--requests 3000]

Starts, in this order:
- the loopback DNS server from the tests (`tests/fixtures/dnsserver.py`) in
  its own process, serving one `v=spf1 ip4:192.0.2.0/24 -all` record per
  sender domain, TTL 0 (so the daemon's resolver cache never answers);
- the real `postwarden policyd -c cfg` as a subprocess (private embedded
  Redis under a temp state_dir) with only the SPF check doing work, its
  `dns.nameservers` pointed at that server;
- the DUNNO floor from `bench/policyd_floor.py`, measured in the same run.

Every request carries its own Postfix `instance`, so the per-message cache
never answers and each request is one SPF decision:
- warm: 50 sender domains, all already in the Redis result cache (a warm-up
  pass fills it): a Redis GET, no DNS;
- cold: a domain never seen before on every request: Redis miss, pyspf in
  a worker thread, one TXT query over UDP, Redis SET.
Figures are ratios to the floor (machine-independent-ish); absolute
numbers are printed too. Nothing asserts on the figures, but every answer
must be the expected one (Received-SPF PREPEND, no errors) or the run
fails before printing any.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.policyd_floor import measure_floor
from bench.policyload import (
    LoadResult,
    policyd_config,
    rcpt_request,
    require_all,
    run_load,
    start_policyd,
    stop,
)

CONNECTIONS = (1, 8, 32)
WARM_DOMAINS = 50

SPF = """\
  access: {enabled: false}
  ratelimit: {enabled: false}
  spf:
    enabled: true
    receiver: mx.bench.invalid
    cache_ttl: 10m
"""


def _domains(tag: str, count: int) -> list[str]:
    return [f"d{i}.{tag}.bench.example" for i in range(count)]


def _serve_dns(domains: list[str], conn: multiprocessing.connection.Connection) -> None:
    """Child process: serve the zone until the parent closes the pipe."""
    from tests.fixtures.dnsserver import DnsServer

    zone = {d: [("TXT", "v=spf1 ip4:192.0.2.0/24 -all")] for d in domains}
    with DnsServer(zone) as server:
        conn.send(server.nameserver)
        try:
            conn.recv()
        except EOFError:
            pass


def requests_for(domains: list[str], tag: str) -> list[bytes]:
    return [
        rcpt_request(sender=f"user@{d}", instance=f"{tag}.{i}", client_address="192.0.2.10")
        for i, d in enumerate(domains)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=3000, help="requests per measurement")
    args = ap.parse_args()
    total = args.requests

    warm = _domains("warm", WARM_DOMAINS)
    cold = {c: _domains(f"cold{c}", total) for c in CONNECTIONS}
    all_domains = warm + [d for ds in cold.values() for d in ds] + _domains("warmup", 500)
    parent, child = multiprocessing.Pipe()
    dns_proc = multiprocessing.Process(target=_serve_dns, args=(all_domains, child), daemon=True)
    dns_proc.start()
    nameserver = parent.recv()

    results: dict[str, dict[int, LoadResult]] = {}
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            (tmp / "floor").mkdir()
            results["floor"] = measure_floor(tmp / "floor", total, CONNECTIONS)  # type: ignore[assignment]
            (tmp / "spf").mkdir()
            sock = str(tmp / "spf" / "policy.sock")
            cfg = tmp / "spf" / "spf.yaml"
            cfg.write_text(
                policyd_config(
                    tmp / "spf" / "state",
                    sock,
                    SPF,
                    extra=f'dns: {{nameservers: ["{nameserver}"], timeout: 2s}}\n',
                )
            )
            proc = start_policyd(cfg, sock, tmp / "spf" / "policyd.log")
            target = f"unix:{sock}"
            try:
                # Warm-up: imports, thread pool, Lua/script loads; fill the cache.
                run_load(target, requests_for(_domains("warmup", 500), "wu"), 4, 500)
                run_load(target, requests_for(warm, "fill"), 1, WARM_DOMAINS)
                many = warm * (total // WARM_DOMAINS + 1)
                # Every sender passes SPF: each answer must be the PREPENDed
                # Received-SPF header (a temperror or fallback would not be).
                results["warm"] = {
                    c: require_all(
                        "spf warm", run_load(target, requests_for(many, f"w{c}"), c, total),
                        total, "PREPEND",
                    )
                    for c in CONNECTIONS
                }  # fmt: skip
                results["cold"] = {
                    c: require_all(
                        "spf cold", run_load(target, requests_for(cold[c], f"c{c}"), c, total),
                        total, "PREPEND",
                    )
                    for c in CONNECTIONS
                }  # fmt: skip
            finally:
                stop(proc)
                log = (tmp / "spf" / "policyd.log").read_text(errors="replace").strip()
                if log:
                    print("policyd log (warnings and up):\n" + log[-2000:])
    finally:
        parent.send("stop")
        dns_proc.join(10)

    print(f"{'':<10}{'conns':>6}{'rps':>10}{'x floor':>9}{'p50 ms':>9}{'p99 ms':>9}  actions")
    for kind in ("floor", "warm", "cold"):
        for c in CONNECTIONS:
            r = results[kind][c]
            ratio = r.rps / results["floor"][c].rps
            print(
                f"{kind:<10}{c:>6}{r.rps:>10.0f}{ratio:>9.2f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
                f"  {dict(r.actions)}{' errors=' + str(r.errors) if r.errors else ''}"
            )
    print(
        json.dumps(
            {k: {c: r.__dict__ for c, r in v.items()} for k, v in results.items()}, default=str
        )
    )


if __name__ == "__main__":
    main()
