"""The DUNNO floor: policy requests/s with one cheap check, at 1/8/32 connections.

    .venv/bin/python bench/policyd_floor.py [--requests 20000]

Starts the real `postwarden policyd` (private embedded Redis under a temp
state_dir) with only the `access` check and one rule that never matches, so
every request runs the full server path (parse, pipeline, decision log line,
reply) and answers DUNNO. Other policy benchmarks report their figures as
ratios to this floor measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.policyload import (
    policyd_config,
    rcpt_request,
    require_all,
    run_load,
    start_policyd,
    stop,
)

FLOOR = """\
  access:
    rules:
      - {recipient: "never@invalid.example", action: "REJECT never"}
"""


def floor_config(tmp: Path) -> tuple[Path, str]:
    sock = str(tmp / "policy.sock")
    cfg = tmp / "floor.yaml"
    cfg.write_text(policyd_config(tmp / "state", sock, FLOOR))
    return cfg, f"unix:{sock}"


def measure_floor(tmp: Path, total: int, conns: tuple[int, ...] = (1, 8, 32)) -> dict[int, object]:
    cfg, target = floor_config(tmp)
    proc = start_policyd(cfg, target.removeprefix("unix:"), tmp / "floor.log")
    try:
        requests = [rcpt_request(recipient=f"user{i}@example.net") for i in range(100)]
        run_load(target, requests, 4, 500)  # warm-up: imports, script loads
        # Every answer must be DUNNO: the check ran and found nothing (an
        # error or a fallback would answer faster and prove nothing).
        return {
            c: require_all("DUNNO floor", run_load(target, requests, c, total), total, "DUNNO")
            for c in conns
        }
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        results = measure_floor(Path(d), args.requests)
    out = {}
    for c, r in results.items():
        print(r.row("DUNNO floor"))  # type: ignore[attr-defined]
        out[c] = r.__dict__
    print(json.dumps({"floor": out}, default=str))


if __name__ == "__main__":
    main()
