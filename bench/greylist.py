"""Greylisting decisions/s and p50/p99 latency: postwarden vs Debian's postgrey.

    .venv/bin/python bench/greylist.py [--requests 10000] [--triplets 2000]

In one run, at 1, 8 and 32 connections, with the same request stream:
- the DUNNO floor (`bench/policyd_floor.py`: postwarden's server path with
  one cheap check);
- `postwarden policyd` with only greylisting on (private embedded Redis,
  shipped default whitelist on, as installed);
- Debian's postgrey (Net::Server::Multiplex, BerkeleyDB), started here on a
  unix socket with a temporary --dbdir and its installed whitelists.

The stream: `--triplets` distinct (client, sender, recipient) triplets from
distinct /24 networks whose clients have no verified reverse name, cycled.
With delay 300s every answer is a greylisting decision that reads and
writes state (a new triplet, then early retries): the path a greylisting
server spends its time on. The figures depend on the machine; read them as
ratios to the floor measured in the same run. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
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
    wait_for_socket,
)

CONNECTIONS = (1, 8, 32)

GREYLIST = """\
  order: [greylist]
  greylist:
    enabled: true
    delay: 5m
"""


def request_stream(triplets: int) -> list[bytes]:
    out = []
    for i in range(triplets):
        a, b = divmod(i, 250)
        out.append(
            rcpt_request(
                client_address=f"10.{a % 250}.{b}.{7 + i % 3}",
                client_name="unknown",
                reverse_client_name="unknown",
                helo_name=f"host{i}.example.com",
                sender=f"sender{i % 97}@example{i % 13}.com",
                recipient=f"user{i % 211}@example.net",
                instance=f"{i:x}.bench.0",
            )
        )
    return out


def measure_postwarden(tmp: Path, stream: list[bytes], total: int) -> dict[int, LoadResult]:
    sock = str(tmp / "pw.sock")
    cfg = tmp / "greylist.yaml"
    cfg.write_text(policyd_config(tmp / "state", sock, GREYLIST))
    proc = start_policyd(cfg, sock, tmp / "postwarden.log")
    try:
        run_load(f"unix:{sock}", stream, 4, 500)  # warm-up: imports, script load
        # Within the 5m delay every triplet is new or retried too early:
        # every answer must be the greylisting DEFER_IF_PERMIT.
        return {
            c: require_all(
                "postwarden greylist",
                run_load(f"unix:{sock}", stream, c, total),
                total,
                "DEFER_IF_PERMIT",
            )
            for c in CONNECTIONS
        }
    finally:
        stop(proc)


def measure_postgrey(tmp: Path, stream: list[bytes], total: int) -> dict[int, LoadResult]:
    exe = shutil.which("postgrey") or "/usr/sbin/postgrey"
    dbdir = tmp / "postgrey-db"
    dbdir.mkdir()
    sock = str(tmp / "postgrey.sock")
    if os.geteuid() == 0:
        # postgrey drops to its own user; its dbdir must be writable by it.
        user = pwd.getpwnam("postgrey")
        os.chown(tmp, user.pw_uid, user.pw_gid)
        os.chown(dbdir, user.pw_uid, user.pw_gid)
    log = (tmp / "postgrey.log").open("wb")
    proc = subprocess.Popen(
        [exe, f"--unix={sock}", f"--dbdir={dbdir}", "--delay=300"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_socket(sock, proc, 20.0)
        run_load(f"unix:{sock}", stream, 4, 500)
        return {
            c: require_all(
                "postgrey", run_load(f"unix:{sock}", stream, c, total), total, "DEFER_IF_PERMIT"
            )
            for c in CONNECTIONS
        }
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=10000, help="per connection count")
    ap.add_argument("--triplets", type=int, default=2000)
    args = ap.parse_args()
    stream = request_stream(args.triplets)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tmp.chmod(0o755)  # postgrey runs as its own user and must reach its dbdir
        for sub in ("floor", "postwarden", "postgrey"):
            (tmp / sub).mkdir()
        floor = measure_floor(tmp / "floor", args.requests, CONNECTIONS)
        ours = measure_postwarden(tmp / "postwarden", stream, args.requests)
        theirs = measure_postgrey(tmp / "postgrey", stream, args.requests)
    out: dict[str, dict[int, object]] = {"floor": {}, "postwarden": {}, "postgrey": {}}
    for c in CONNECTIONS:
        f = floor[c]
        assert isinstance(f, LoadResult)
        print(f.row("DUNNO floor"))
        print(ours[c].row("postwarden greylist") + f"  x{ours[c].rps / f.rps:.2f} of floor")
        print(theirs[c].row("postgrey 1.37 (Debian)") + f"  x{theirs[c].rps / f.rps:.2f} of floor")
        print(f"  actions: postwarden {ours[c].actions}  postgrey {theirs[c].actions}")
        out["floor"][c] = f.__dict__
        out["postwarden"][c] = ours[c].__dict__
        out["postgrey"][c] = theirs[c].__dict__
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
