"""Messages/s through Postfix: the seed header_checks file in the headers milter,
the same file in Postfix's own `header_checks`, and no checks, in one run.

Configurations (interleaved per round, as bench/throughput.py does, with the
order rotated every round):

- `none`: Postfix alone;
- `postfix`: `header_checks = regexp:<seed file>` inside Postfix's cleanup;
- `milter`: `smtpd_milters = unix:...` -> `postwarden milter headers` with
  `header_checks: [<seed file>]` (raw and decoded matching on).

The seed file is ../shared/rules/header_checks.seed-spammers (63 lines; 51
load in both Postfix and postwarden, 12 are skipped by both). The benchmark's
messages match none of them, so every header is tested against every rule:
the work a site pays on each clean message. Reuses bench/throughput.py's
client (smtp-source), timing and summary. Run from the repository root:

    .venv/bin/python -m bench.headers [--messages 1000] [--sessions 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.throughput import SMTP_SOURCE, Bench, RunResult, report, run_rounds, summarize
from tests.harness.postfix import PostfixOptions
from tests.harness.services import ServiceProcess, start_service, write_config

SEED = Path(__file__).resolve().parents[2] / "shared" / "rules" / "header_checks.seed-spammers"
CONFIGS = ("none", "postfix", "milter")


class HeadersBench(Bench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self._milter: ServiceProcess | None = None

    def _options(self, config: str) -> tuple[PostfixOptions, ServiceProcess | None]:
        extra = dict(kv.split("=", 1) for kv in self.args.main_cf)
        options = PostfixOptions(relayhost=self.sink.relayhost, main_cf=extra)
        if config == "postfix":
            options.header_checks = self.args.rules.read_text(encoding="utf-8").splitlines()
        if config != "milter":
            return options, None
        cfg_dir = self.work / "cfg-headers"
        socket_dir = self.work / "sock-headers"
        socket_dir.mkdir(mode=0o755, exist_ok=True)
        config_file = write_config(
            cfg_dir,
            socket_dir,
            self.redis.socket,
            milters=("headers",),
            overrides={
                "log": {"level": "error"},
                "milters": {"headers": {"header_checks": [str(self.args.rules)]}},
            },
        )
        cfg_dir.chmod(0o755)
        self._milter = start_service(config_file, "milter", "headers", log_dir=cfg_dir)
        options.smtpd_milters = [config_file.socket("headers")]
        options.milter_default_action = "tempfail"  # a failing milter shows as lost mail
        # Returned as None: Bench.run_one would look for the noop milter's header.
        return options, None

    def run_one(self, config: str, round_no: int) -> RunResult:
        try:
            return super().run_one(config, round_no)
        finally:
            if self._milter is not None:
                self._milter.stop()
                self._milter = None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="header_checks: milter vs Postfix vs none")
    ap.add_argument("--messages", type=int, default=1000, help="messages per run (1000)")
    ap.add_argument("--sessions", type=int, default=10, help="concurrent SMTP sessions (10)")
    ap.add_argument("--size", type=int, default=1024, help="approximate message size (1024)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; median shown (3)")
    ap.add_argument("--warmup", type=int, default=50, help="untimed messages first (50)")
    ap.add_argument("--rules", type=Path, default=SEED, help="the regexp table (seed file)")
    ap.add_argument(
        "--client",
        choices=("smtp-source", "python"),
        default="smtp-source" if SMTP_SOURCE else "python",
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="deadline per run, seconds")
    ap.add_argument(
        "--main-cf", action="append", default=[], metavar="NAME=VALUE",
        help="extra Postfix main.cf parameter (repeatable)",
    )  # fmt: skip
    ap.add_argument("--json", type=Path, help="also write the JSON result here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("Postfix instances need root")
    started = time.monotonic()
    with HeadersBench(args) as bench:
        results = run_rounds(bench, CONFIGS, args.rounds)
    summary = summarize(results, CONFIGS)
    return report("headers", argv, args, {"rules": str(args.rules)}, started, summary, results)


if __name__ == "__main__":
    sys.exit(main())
