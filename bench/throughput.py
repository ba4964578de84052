"""Messages/s through a real Postfix with and without the noop milter.

In one run, for each configuration:

- `none`: Postfix alone (the baseline);
- `unix`: `smtpd_milters = unix:...` -> `postwarden milter noop`;
- `inet`: the same milter over loopback TCP (`inet:127.0.0.1:PORT`);
- `header_checks` (opt-in): Postfix's own `header_checks` with a small
  regexp table, for comparing a milter against what Postfix does alone;

N concurrent SMTP sessions (default 10) send a fixed number of messages
(default 2000) to a fresh private Postfix (tests/harness), which relays them
to the in-process sink. The clock runs from the first send to the moment the
last message reaches the sink, so queueing and relaying count, as they do
for a real server. Each figure is reported as a ratio to the `none` run of
the same round, and rounds interleave the configurations so drift on a
shared machine hits them alike; the table shows the median round.

The client is Postfix's `smtp-source` (C, one connection per message like
an MTA) when installed, else a Python client. Every wait has a deadline, so
the script stops by itself. Run from the repository root:

    .venv/bin/python -m bench.throughput [--messages 2000] [--sessions 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from postwarden.store.embedded import EmbeddedRedis
from tests.harness.ports import shared_tempdir
from tests.harness.postfix import PostfixInstance, PostfixOptions, make_message, smtp_send
from tests.harness.services import ServiceProcess, start_service, write_config
from tests.harness.sink import SmtpSink

CONFIGS = ("none", "unix", "inet", "header_checks")
DEFAULT_CONFIGS = ("none", "unix", "inet")
SMTP_SOURCE = shutil.which("smtp-source", path="/usr/sbin:/usr/bin")

# A small table shaped like a site's anti-spam header_checks: a few anchored
# patterns that do not match the benchmark's messages (work, but no action).
HEADER_CHECKS = (
    r"/^Subject:.*viagra/ REJECT spam",
    r"/^Subject:.*\bloan\b.*approved/ REJECT spam",
    r"/^From:.*@(spam|junk)\.example$/ REJECT spam",
    r"/^X-Mailer:.*BulkMailer/ REJECT spam",
    r"/^Content-Type:.*name=.*\.(exe|scr|pif|bat)/ REJECT attachment",
)


@dataclass
class RunResult:
    config: str
    round: int
    messages: int
    delivered: int
    seconds: float
    client_seconds: float
    rate: float
    ok: bool
    error: str = ""
    # CPU the milter process spent per timed message (user + system, all its
    # threads): unlike the rate, barely moved by other load on the machine.
    milter_cpu_ms: float | None = None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` so far (proc(5): stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _send_python(host: str, port: int, messages: int, sessions: int, size: int) -> int:
    """Fallback client: `sessions` threads, one SMTP connection per message."""
    body = ("x" * 72 + "\r\n") * max(1, size // 74)
    data = make_message(subject="throughput", body=body)
    counter = iter(range(messages))
    lock = threading.Lock()
    failures = 0

    def worker() -> None:
        nonlocal failures
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            result = smtp_send(host, port, "bench@example.org", ["sink@example.net"], data)
            if not result.accepted:
                with lock:
                    failures += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def _send(
    host: str,
    port: int,
    messages: int,
    sessions: int,
    size: int,
    client: str,
    timeout: float,
    message_file: Path | None = None,
) -> None:
    """`message_file` (smtp-source only): send that message (LF line ends)
    instead of smtp-source's generated one."""
    if client == "smtp-source":
        assert SMTP_SOURCE is not None
        argv = [
            SMTP_SOURCE,
            "-s", str(sessions),
            "-m", str(messages),
            *(["-l", str(size)] if message_file is None else []),
            "-f", "bench@example.org",
            "-t", "sink@example.net",
            "-M", "client.bench.test",
            *(["-F", str(message_file)] if message_file is not None else []),
            f"{host}:{port}",
        ]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"smtp-source exited {proc.returncode}: {proc.stderr.strip()}")
        return
    failures = _send_python(host, port, messages, sessions, size)
    if failures:
        raise RuntimeError(f"{failures} messages were not accepted")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = shared_tempdir("pw-bench-tp-")
        self.sink = SmtpSink()
        self.redis = EmbeddedRedis(self.work / "redis", persist=False)
        self.services: list[ServiceProcess] = []

    def __enter__(self) -> Bench:
        self.sink.start()
        self.redis.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for service in self.services:
            service.stop()
        self.redis.stop()
        self.sink.stop()
        shutil.rmtree(self.work, ignore_errors=True)

    def _options(self, config: str) -> tuple[PostfixOptions, ServiceProcess | None]:
        extra = dict(kv.split("=", 1) for kv in self.args.main_cf)
        options = PostfixOptions(relayhost=self.sink.relayhost, main_cf=extra)
        if config == "header_checks":
            options.header_checks = HEADER_CHECKS
        if config not in ("unix", "inet"):
            return options, None
        cfg_dir = self.work / f"cfg-{config}"
        socket_dir = self.work / f"sock-{config}"
        socket_dir.mkdir(mode=0o755, exist_ok=True)
        config_file = write_config(
            cfg_dir,
            socket_dir,
            self.redis.socket,
            milters=("noop",),
            inet=("noop",) if config == "inet" else (),
            overrides={"log": {"level": "info"}},
        )
        cfg_dir.chmod(0o755)
        service = start_service(config_file, "milter", "noop", log_dir=cfg_dir)
        self.services.append(service)
        options.smtpd_milters = [config_file.socket("noop")]
        # Postfix's documented default is tempfail; a milter failure must
        # show up as lost throughput, not silently pass as "accept".
        options.milter_default_action = "tempfail"
        return options, service

    def run_one(self, config: str, round_no: int) -> RunResult:
        a = self.args
        options, service = self._options(config)
        postfix = PostfixInstance(options)
        try:
            postfix.start()
            # Warm-up: spawn smtpd/cleanup/smtp processes and the milter's
            # first connections outside the timed window.
            warm = min(a.warmup, a.messages)
            message_file = getattr(a, "message_file", None)
            if warm:
                _send(postfix.host, postfix.port, warm, min(a.sessions, warm), a.size,
                      a.client, a.timeout, message_file)  # fmt: skip
                self.sink.wait_for(warm, a.timeout)
            self.sink.clear()
            cpu_before = _cpu_seconds(service.pid) if service is not None else 0.0
            start = time.monotonic()
            error = ""
            client_seconds = float("nan")
            try:
                _send(postfix.host, postfix.port, a.messages, a.sessions, a.size, a.client,
                      a.timeout, message_file)  # fmt: skip
                client_seconds = time.monotonic() - start
                self.sink.wait_for(a.messages, max(1.0, a.timeout - client_seconds))
            except (TimeoutError, RuntimeError, subprocess.TimeoutExpired) as exc:
                error = str(exc).splitlines()[0]
            seconds = time.monotonic() - start
            delivered = self.sink.count
            cpu_ms = None
            if service is not None and delivered:
                cpu_ms = round(1000 * (_cpu_seconds(service.pid) - cpu_before) / delivered, 3)
            if not error:
                error = self.check_delivered(config, service, delivered)
            return RunResult(
                config=config,
                round=round_no,
                messages=a.messages,
                delivered=delivered,
                seconds=round(seconds, 3),
                client_seconds=round(client_seconds, 3),
                rate=round(delivered / seconds, 1) if seconds > 0 else 0.0,
                ok=not error and delivered == a.messages,
                error=error,
                milter_cpu_ms=cpu_ms,
            )
        finally:
            postfix.stop()
            if service is not None:
                service.stop()
                self.services.remove(service)
            self.sink.clear()

    def check_delivered(self, config: str, service: ServiceProcess | None, delivered: int) -> str:
        """Why the run does not count ("" = it does): the milter really ran,
        so its header is on every delivered message."""
        if service is None:
            return ""
        stamped = sum(1 for m in self.sink.messages if m.header("X-Postwarden-Noop"))
        if stamped != delivered:
            return f"only {stamped} of {delivered} messages carry X-Postwarden-Noop"
        return ""


class RunsOne(Protocol):
    def run_one(self, config: str, round_no: int) -> RunResult: ...


def run_rounds(bench: RunsOne, configs: Sequence[str], rounds: int) -> list[RunResult]:
    """Every config once per round, the order rotated each round: the first
    run of a round was measurably slower, so no config is always first."""
    results: list[RunResult] = []
    width = max(len(c) for c in configs)
    for round_no in range(1, rounds + 1):
        shift = (round_no - 1) % len(configs)
        for config in (*configs[shift:], *configs[:shift]):
            result = bench.run_one(config, round_no)
            results.append(result)
            _log(
                f"round {round_no} {config:<{width}} {result.rate:8.1f} msgs/s"
                f" ({result.delivered}/{result.messages} in {result.seconds:.2f}s)"
                + (f" ERROR {result.error}" if result.error else "")
            )
    return results


def summarize(results: Sequence[RunResult], configs: Sequence[str]) -> dict[str, object]:
    """Per config: median rate and the median of per-round ratios to `none`."""
    by_round: dict[int, dict[str, RunResult]] = {}
    for r in results:
        by_round.setdefault(r.round, {})[r.config] = r
    summary: dict[str, object] = {}
    for config in configs:
        runs = [r for r in results if r.config == config and r.ok]
        ratios = [
            rounds[config].rate / rounds["none"].rate
            for rounds in by_round.values()
            if config in rounds and "none" in rounds
            and rounds[config].ok and rounds["none"].ok and rounds["none"].rate > 0
        ]  # fmt: skip
        cpu = [r.milter_cpu_ms for r in runs if r.milter_cpu_ms is not None]
        summary[config] = {
            "median_rate": round(statistics.median(r.rate for r in runs), 1) if runs else None,
            "milter_cpu_ms": round(statistics.median(cpu), 3) if cpu else None,
            "ratio_to_none": round(statistics.median(ratios), 3) if ratios else None,
            "rounds_ok": len(runs),
        }
    return summary


def _table(summary: dict[str, object], results: Sequence[RunResult]) -> str:
    lines = [f"{'config':<14} {'msgs/s':>8} {'ratio':>7} {'cpu ms':>7}  rounds (msgs/s)"]
    for config, s in summary.items():
        assert isinstance(s, dict)
        rates = " ".join(
            f"{r.rate:.0f}" if r.ok else f"FAIL({r.error[:40]})"
            for r in results
            if r.config == config
        )
        rate = "-" if s["median_rate"] is None else f"{s['median_rate']:.0f}"
        ratio = "-" if s["ratio_to_none"] is None else f"{s['ratio_to_none']:.2f}"
        cpu = "-" if s.get("milter_cpu_ms") is None else f"{s['milter_cpu_ms']:.2f}"
        lines.append(f"{config:<14} {rate:>8} {ratio:>7} {cpu:>7}  {rates}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Postfix throughput with and without the noop milter (see module doc)."
    )
    ap.add_argument("--messages", type=int, default=2000, help="messages per run (2000)")
    ap.add_argument("--sessions", type=int, default=10, help="concurrent SMTP sessions (10)")
    ap.add_argument("--size", type=int, default=1024, help="approximate message size (1024)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; median shown (3)")
    ap.add_argument("--warmup", type=int, default=50, help="untimed messages first (50)")
    ap.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help=f"comma list from {','.join(CONFIGS)}; 'none' is always run first",
    )
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
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        ap.error(f"unknown configs: {', '.join(sorted(unknown))}")
    configs = ["none", *[c for c in configs if c != "none"]]
    if os.geteuid() != 0:
        ap.error("Postfix instances need root")

    started = time.monotonic()
    with Bench(args) as bench:
        results = run_rounds(bench, configs, args.rounds)
    params = {"main_cf": args.main_cf}
    return report("throughput", argv, args, params, started, summarize(results, configs), results)


def report(
    name: str,
    argv: Sequence[str] | None,
    args: argparse.Namespace,
    params: dict[str, object],
    started: float,
    summary: dict[str, object],
    results: Sequence[RunResult],
) -> int:
    """Print the table and the JSON record of a Postfix benchmark (also to
    --json); exit status 1 if any run failed its checks."""
    record = {
        "benchmark": name,
        "command": " ".join([f"python -m bench.{name}", *(argv or sys.argv[1:])]),
        "params": {
            "messages": args.messages,
            "sessions": args.sessions,
            "size": args.size,
            "rounds": args.rounds,
            "client": args.client,
            **params,
        },
        "postfix": subprocess.run(
            ["postconf", "-h", "mail_version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "cpus": os.cpu_count(),
        "wall_seconds": round(time.monotonic() - started, 1),
        "summary": summary,
        "runs": [asdict(r) for r in results],
    }
    print(_table(summary, results))
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
