"""The spam milter: scan speed, Postfix throughput, and detection on the corpus.

Parts (`--part scan|postfix|detect|sa|rspamd|all`), each checked before it prints:

- `scan`: every message of ../shared/corpus (3,250) through the same path
  as `postwarden scan` (milters.pipeline.scan, spam milter only, local
  checks: DNS lists off), timed in CPU seconds of this process
  (time.process_time, all threads). Every message must get a spam verdict
  with a score. Goal: >= 400 msgs per CPU-second.
- `postfix`: messages/s through a private Postfix with the spam milter vs
  Postfix alone, interleaved rounds as bench/throughput.py (its client, timing
  and summary). The milter runs with the shipped defaults except: DNS lists
  asked through a local DNS server that answers every query (NXDOMAIN, as
  for unlisted names), greylisting off (a benchmark cannot retry), and
  `trusted_networks: []` so the loopback client is scored as inbound. Every
  delivered message must carry X-Spam-Score. Goal: ratio >= 0.60.
  With `--rspamd`, a third configuration in the same interleaved rounds:
  Rspamd (Debian's 3.4 package, a private instance from
  bench/rspamd_instance.py: network checks off, DNS to the same local
  server) as Postfix's milter through its rspamd_proxy worker in milter
  mode; every delivered message must carry its X-Spamd-Result.
- `detect`: a FIXED split of the corpus, the one bench/accuracy.py (Bayes)
  uses, so the figures can be read side by side: a message is in the TEST
  set when blake2b-64(its file name) mod 100 < 30 (958 of 3,250).
  The rules alone (no Bayes, no DNS), each message scored with the clock
  at its arrival (arrival_time: its first Received stamp, so its Date is
  judged as when it was received): spam recall and ham false-positive rate at the add_header
  threshold (6.0), and ROC AUC of the score.

    .venv/bin/python -m bench.spam --part scan
    sudo .venv/bin/python -m bench.spam --part postfix --messages 1000 --rounds 3
    .venv/bin/python -m bench.spam --part detect
    .venv/bin/python -m bench.spam --part sa      # SpamAssassin rules on the same split

`rspamd`: the same TEST set through that private Rspamd's normal worker
(/checkv2, rspamc's HTTP API), rules only (no Redis: no Bayes, fuzzy or
neural; network checks off), with DATE_IN_PAST and HFILTER_HOSTNAME_UNKNOWN
disabled per request (they judge the 2002 date and the absent client host,
which ours is spared by its clock and Envelope); recall and FP at 6.0.

    sudo .venv/bin/python -m bench.spam --part postfix --rspamd --messages 300 --rounds 3
    .venv/bin/python -m bench.spam --part rspamd

`sa`: Debian's SpamAssassin on the same TEST set, rules only (use_bayes 0,
network tests off: skip_rbl_checks, no Razor/Pyzor/DCC), through a private
`spamd --local` and `spamc -R`; recall and FP at its required_score 5.0, and
ROC AUC of its score.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from email.parser import BytesHeaderParser
from email.utils import mktime_tz, parsedate_tz
from pathlib import Path
from typing import Any

import yaml

from bench.rspamd_instance import RspamdInstance, rspamd_version
from bench.throughput import SMTP_SOURCE, Bench, RunResult, report, run_rounds, summarize
from milters import pipeline
from milters.context import ServiceContext
from milters.message import Envelope
from postwarden.bayes.tokens import strip_mbox_from
from postwarden.cli.scan import enabled_stages
from postwarden.clock import ManualClock
from postwarden.config.load import load_config_text
from postwarden.store.embedded import EmbeddedRedis
from tests.fixtures.corpus import unpack as unpack_corpus
from tests.fixtures.dnsserver import DnsServer
from tests.harness.postfix import PostfixOptions
from tests.harness.services import ServiceProcess, start_service, write_config

CORPUS_TIME = 1_038_700_800.0  # 2002-12-01T00:00:00Z
REPO = Path(__file__).resolve().parents[1]
TEST_PERCENT = 30  # blake2b-64(file name) mod 100 < 30: the test set (as bench/accuracy.py)
# The header each milter adds to every message it scanned (checked per run).
STAMP = {"spam": "X-Spam-Score", "rspamd": "X-Spamd-Result"}
ONLY_SPAM = {"milters": {n: {"enabled": n == "spam"} for n in ("headers", "attachments", "dkim",
                                                               "spam", "noop")}}  # fmt: skip


def corpus(tmp: Path) -> list[tuple[str, str, bytes]]:
    """(name in the tarball, "spam"|"ham", raw bytes) for every message."""
    out = []
    for f in unpack_corpus(tmp):
        name = str(f.relative_to(tmp))
        out.append((name, "spam" if "/spam/" in f"/{name}" else "ham", f.read_bytes()))
    if len(out) != 3250:
        raise SystemExit(f"expected 3250 corpus messages, found {len(out)}")
    return out


def in_test_set(name: str) -> bool:
    """`name` is the message's file name (no directory)."""
    h = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
    return h % 100 < TEST_PERCENT


def arrival_time(raw: bytes) -> float:
    """When a corpus message reached its mailbox: the date its first Received
    header (the last hop) stamps, else its Delivery-Date or mbox From_ line,
    else CORPUS_TIME. The milter judges Date against the time a message
    arrives; one fixed clock for the whole corpus (mail of Jan-Dec 2002)
    called late mail DATE_IN_FUTURE and early mail DATE_IN_PAST, which live
    mail never sees."""
    stamps = []
    if raw.startswith(b"From "):  # "From sender  Thu Sep 26 16:43:26 2002"
        stamps.append(raw.split(b"\n", 1)[0].decode("latin-1").split(None, 2)[2:3])
    headers = BytesHeaderParser().parsebytes(strip_mbox_from(raw))
    received = headers.get("Received")
    candidates = [
        str(received).rpartition(";")[2] if received else None,
        headers.get("Delivery-Date"),
        *(s[0] for s in stamps if s),
    ]
    for text in candidates:
        parsed = parsedate_tz(str(text).strip()) if text else None
        if parsed is None:
            continue
        if parsed[9] is None:  # asctime stamps carry no zone: read as UTC
            parsed = (*parsed[:9], 0)
        try:
            return float(mktime_tz(parsed))
        except (OverflowError, ValueError):
            continue
    return CORPUS_TIME


def at_arrival(service: ServiceContext, raw: bytes) -> None:
    """Set a replay's ManualClock to the message's arrival_time."""
    if isinstance(service.clock, ManualClock):
        service.clock.set(arrival_time(raw))


def _service(extra: dict[str, Any], clock: ManualClock | None = None,
             redis_socket: str | None = None) -> ServiceContext:  # fmt: skip
    doc = {"state_dir": "/nonexistent", "trusted_networks": [], **ONLY_SPAM}
    doc["milters"]["spam"].update({"dnsbl": {"enabled": False}, **extra})  # type: ignore[index]
    if redis_socket is not None:
        doc["redis"] = {"url": f"unix://{redis_socket}"}
    settings = load_config_text(yaml.safe_dump(doc))
    return ServiceContext(settings, clock=clock) if clock else ServiceContext(settings)


def scored(messages: Sequence[tuple[str, str, bytes]], service: ServiceContext,
           seen: Counter[str] | None = None) -> list[tuple[str, float]]:  # fmt: skip
    """(kind, score) per message through pipeline.scan; asserts each was
    scored. `seen` counts the messages each symbol fired on."""
    stages = enabled_stages(service)
    assert [s.name for s in stages] == ["spam"], stages
    runner = pipeline.Runner(service)
    env = Envelope(mail_from="", recipients=("user@example.net",), queue_id="BENCH")
    out = []
    try:
        for name, kind, raw in messages:
            at_arrival(service, raw)
            result = pipeline.scan(runner, stages, raw, env, name)
            [r] = result.results
            if r.outcome != "ok" or r.verdict.score is None:
                raise SystemExit(f"{name}: not scored ({r.outcome} {r.error})")
            out.append((kind, r.verdict.score))
            if seen is not None:
                seen.update({sym.name for sym in r.verdict.symbols})
    finally:
        runner.close()
    return out


def part_scan(tmp: Path) -> dict[str, Any]:
    """The whole corpus through the spam milter as shipped, Bayes included:
    a private redis-server, the corpus learned by `postwarden learn` first
    (so the Bayes check does its whole work), then every message scanned."""
    messages = corpus(tmp / "corpus")
    redis = EmbeddedRedis(tmp / "redis", persist=False)
    redis.start()
    try:
        cfg = tmp / "learn.yaml"
        cfg.write_text(f'redis: {{url: "unix://{redis.socket}"}}\n')
        for kind in ("spam", "ham"):
            subprocess.run([str(REPO / ".venv" / "bin" / "postwarden"), "learn", kind, "-q",
                            "-c", str(cfg), str(tmp / "corpus" / "train" / kind)],
                           check=True)  # fmt: skip
        service = _service({"thresholds": {"greylist": None}}, redis_socket=str(redis.socket))
        scored(messages[:50], service)  # warm-up: imports, caches, script load
        seen: Counter[str] = Counter()
        t0, w0 = time.process_time(), time.monotonic()
        results = scored(messages, service, seen)
        cpu, wall = time.process_time() - t0, time.monotonic() - w0
    finally:
        redis.stop()
    assert len(results) == len(messages)
    bayes = seen["BAYES_SPAM"] + seen["BAYES_HAM"]
    # The work was done: Redis answered every message, Bayes judged nearly all.
    assert seen["STORE_UNAVAILABLE"] == 0 and seen["BAYES_INACTIVE"] == 0, seen
    assert bayes >= 0.95 * len(messages), seen
    return {"messages": len(results), "cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
            "msgs_per_cpu_second": round(len(results) / cpu, 1), "bayes_judged": bayes,
            "goal": 400}  # fmt: skip


def roc_auc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """Probability that a random spam scores above a random ham (ties count half)."""
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        avg = (i + j + 1) / 2  # 1-based average rank of the tie group
        rank_sum += avg * sum(1 for k in range(i, j) if ranked[k][1] == 1)
        i = j
    n_pos, n_neg = len(pos), len(neg)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def part_detect(tmp: Path) -> dict[str, Any]:
    messages = [m for m in corpus(tmp / "corpus") if in_test_set(Path(m[0]).name)]
    service = _service({"thresholds": {"greylist": None}}, ManualClock(CORPUS_TIME))
    results = scored(messages, service)
    threshold = float(service.settings.milters.spam.thresholds.add_header or 6.0)
    spam = [s for k, s in results if k == "spam"]
    ham = [s for k, s in results if k == "ham"]
    assert spam and ham
    return {
        "split": f"blake2b-64(file name) mod 100 < {TEST_PERCENT}",
        "test_spam": len(spam), "test_ham": len(ham), "threshold": threshold,
        "spam_recall": round(sum(s >= threshold for s in spam) / len(spam), 4),
        "ham_fp_rate": round(sum(s >= threshold for s in ham) / len(ham), 4),
        "roc_auc": round(roc_auc(spam, ham), 4),
    }  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def part_sa(tmp: Path) -> dict[str, Any]:
    import shutil
    import socket
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    for tool in ("spamd", "spamc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install spamassassin spamc")
    messages = [m for m in corpus(tmp / "corpus") if in_test_set(Path(m[0]).name)]
    tmp.chmod(0o755)  # spamd's children run as nobody
    tmp.parent.chmod(0o755)
    site = tmp / "sa-site"
    site.mkdir(mode=0o755)
    for pre in Path("/etc/spamassassin").glob("*.pre"):
        shutil.copy(pre, site / pre.name)
    (site / "local.cf").write_text("use_bayes 0\nskip_rbl_checks 1\nuse_razor2 0\nuse_pyzor 0\n"
                                   "use_dcc 0\nrequired_score 5.0\n")  # fmt: skip
    home = tmp / "sa-home"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    port = _free_port()
    spamd = subprocess.Popen(
        ["spamd", "--local", "--listen", f"127.0.0.1:{port}", "--max-children", "2",
         "--siteconfigpath", str(site), "--helper-home-dir", str(home), "--nouser-config",
         "--pidfile", str(tmp / "spamd.pid"), *(["-u", "nobody"] if os.geteuid() == 0 else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if spamd.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("spamd did not start") from None
                time.sleep(0.2)  # readiness poll, not a measurement

        def score(raw: bytes) -> float:
            out = subprocess.run(["spamc", "-d", "127.0.0.1", "-p", str(port), "-R", "-x"],
                                 input=raw, capture_output=True, check=False)  # fmt: skip
            text = out.stdout.decode(errors="replace")
            if "/" not in text.split("\n", 1)[0]:
                raise SystemExit(f"spamc failed ({out.returncode}): {out.stderr[:200]!r}")
            return float(text.split("/", 1)[0])

        with ThreadPoolExecutor(2) as pool:
            scores = list(pool.map(score, [raw for _, _, raw in messages]))
    finally:
        spamd.terminate()
        spamd.wait(30)
    spam = [s for (_, k, _), s in zip(messages, scores, strict=True) if k == "spam"]
    ham = [s for (_, k, _), s in zip(messages, scores, strict=True) if k == "ham"]
    assert len(spam) + len(ham) == len(messages)
    return {
        "split": f"blake2b-64(file name) mod 100 < {TEST_PERCENT}",
        "tool": "SpamAssassin rules only (use_bayes 0, network tests off)",
        "test_spam": len(spam), "test_ham": len(ham), "threshold": 5.0,
        "spam_recall": round(sum(s >= 5.0 for s in spam) / len(spam), 4),
        "ham_fp_rate": round(sum(s >= 5.0 for s in ham) / len(ham), 4),
        "roc_auc": round(roc_auc(spam, ham), 4),
    }  # fmt: skip


# Symbols that judge the benchmark's setting, not the message: the corpus is
# from 2002 (ours runs with its clock set then; Rspamd cannot be) and no
# client host is given (ours has none either). Disabled per request.
RSPAMD_CONTEXT_SYMBOLS = ("DATE_IN_PAST", "HFILTER_HOSTNAME_UNKNOWN")


def part_rspamd(tmp: Path) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    messages = [m for m in corpus(tmp / "corpus") if in_test_set(Path(m[0]).name)]
    tmp.chmod(0o755)  # the workers run as _rspamd
    tmp.parent.chmod(0o755)
    settings = json.dumps({"symbols_disabled": list(RSPAMD_CONTEXT_SYMBOLS)})
    with DnsServer({}) as dns:
        rspamd = RspamdInstance(tmp / "rspamd", dns.nameserver)
        rspamd.start()
        try:

            def score(raw: bytes) -> float:
                result = rspamd.check(raw, {"Settings": settings})
                if not isinstance(result.get("score"), int | float):
                    raise SystemExit(f"rspamd did not score a message: {str(result)[:200]}")
                symbols = result.get("symbols")
                assert isinstance(symbols, dict) and not set(RSPAMD_CONTEXT_SYMBOLS) & set(symbols)
                return float(result["score"])  # type: ignore[arg-type]

            with ThreadPoolExecutor(2) as pool:
                scores = list(pool.map(score, [raw for _, _, raw in messages]))
        finally:
            rspamd.stop()
    spam = [s for (_, k, _), s in zip(messages, scores, strict=True) if k == "spam"]
    ham = [s for (_, k, _), s in zip(messages, scores, strict=True) if k == "ham"]
    assert len(spam) + len(ham) == len(messages)
    threshold = 6.0  # Rspamd's shipped add_header, as ours
    return {
        "split": f"blake2b-64(file name) mod 100 < {TEST_PERCENT}",
        "tool": f"{rspamd_version()} rules only (no Bayes/Redis, network checks off,"
                f" {'/'.join(RSPAMD_CONTEXT_SYMBOLS)} disabled)",
        "test_spam": len(spam), "test_ham": len(ham), "threshold": threshold,
        "spam_recall": round(sum(s >= threshold for s in spam) / len(spam), 4),
        "ham_fp_rate": round(sum(s >= threshold for s in ham) / len(ham), 4),
        "roc_auc": round(roc_auc(spam, ham), 4),
    }  # fmt: skip


class SpamBench(Bench):
    """bench/throughput.py's Bench with `spam` in place of the noop milter."""

    def __init__(self, args: argparse.Namespace, nameserver: str) -> None:
        super().__init__(args)
        self.nameserver = nameserver
        self.stamped: tuple[int, int] = (0, 0)
        clear: Callable[[], None] = self.sink.clear

        def counting_clear() -> None:
            msgs = self.sink.messages
            header = STAMP.get(self._config, "X-Spam-Score")
            self.stamped = (sum(1 for m in msgs if m.header(header)), len(msgs))
            clear()

        self.sink.clear = counting_clear  # type: ignore[method-assign]
        self._milter: ServiceProcess | None = None
        self._rspamd: RspamdInstance | None = None
        self._config = "none"

    def _options(self, config: str) -> tuple[PostfixOptions, ServiceProcess | None]:
        self._config = config
        extra = dict(kv.split("=", 1) for kv in self.args.main_cf)
        options = PostfixOptions(relayhost=self.sink.relayhost, main_cf=extra)
        if config == "rspamd":
            self._rspamd = RspamdInstance(self.work / f"rspamd-{time.monotonic_ns()}",
                                          self.nameserver)  # fmt: skip
            self._rspamd.start()
            options.smtpd_milters = [self._rspamd.milter]
            options.milter_default_action = "tempfail"
            return options, None
        if config != "spam":
            return options, None
        cfg_dir = self.work / "cfg-spam"
        socket_dir = self.work / "sock-spam"
        socket_dir.mkdir(mode=0o755, exist_ok=True)
        config_file = write_config(cfg_dir, socket_dir, self.redis.socket, milters=("spam",),
            overrides={"log": {"level": "error"}, "trusted_networks": [],
                       "dns": {"nameservers": [self.nameserver], "timeout": "2s"},
                       "milters": {"spam": {"thresholds": {"greylist": None}}}})  # fmt: skip
        cfg_dir.chmod(0o755)
        self._milter = start_service(config_file, "milter", "spam", log_dir=cfg_dir)
        options.smtpd_milters = [config_file.socket("spam")]
        options.milter_default_action = "tempfail"  # a failing milter shows as lost mail
        return options, None

    def run_one(self, config: str, round_no: int) -> RunResult:
        try:
            result = super().run_one(config, round_no)
        finally:
            if self._milter is not None:
                self._milter.stop()
                self._milter = None
            if self._rspamd is not None:
                self._rspamd.stop()
                self._rspamd = None
        stamped, total = self.stamped
        if config in STAMP and result.ok and stamped != total:
            error = f"only {stamped}/{total} carry {STAMP[config]}"
            return dataclasses.replace(result, ok=False, error=error)
        return result


def part_postfix(args: argparse.Namespace) -> int:
    configs = ("none", "spam", "rspamd") if args.rspamd else ("none", "spam")
    started = time.monotonic()
    with DnsServer({}) as dns, SpamBench(args, dns.nameserver) as bench:
        results = run_rounds(bench, configs, args.rounds)
    summary = summarize(results, configs)
    params: dict[str, object] = {"part": "postfix"}
    if args.rspamd:
        params["rspamd"] = rspamd_version()
    return report("spam", None, args, params, started, summary, results)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="spam milter: scan speed, Postfix ratio, detection")
    parts = ("scan", "postfix", "detect", "sa", "rspamd", "all")
    ap.add_argument("--part", choices=parts, default="all")
    ap.add_argument("--messages", type=int, default=1000, help="postfix: messages per run")
    ap.add_argument("--sessions", type=int, default=10, help="postfix: SMTP sessions (10)")
    ap.add_argument("--size", type=int, default=1024, help="postfix: message size (1024)")
    ap.add_argument("--rounds", type=int, default=3, help="postfix: rounds; median shown (3)")
    ap.add_argument("--warmup", type=int, default=50, help="postfix: untimed messages first")
    ap.add_argument("--client", choices=("smtp-source", "python"),
                    default="smtp-source" if SMTP_SOURCE else "python")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=300.0, help="postfix: deadline per run")
    ap.add_argument("--main-cf", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--json", type=Path, help="postfix: also write the JSON result here")
    ap.add_argument("--rspamd", action="store_true",
                    help="postfix: also Rspamd's proxy worker as the milter")  # fmt: skip
    args = ap.parse_args(argv)
    status = 0
    with tempfile.TemporaryDirectory(prefix="pw-bench-spam-") as tmpdir:
        tmp = Path(tmpdir)
        if args.part in ("scan", "all"):
            print(json.dumps({"part": "scan", **part_scan(tmp / "scan")}))
        if args.part in ("detect", "all"):
            print(json.dumps({"part": "detect", **part_detect(tmp / "detect")}))
        if args.part == "sa":
            print(json.dumps({"part": "sa", **part_sa(tmp / "sa")}))
        if args.part == "rspamd":
            print(json.dumps({"part": "rspamd", **part_rspamd(tmp / "rspamd")}))
    if args.part in ("postfix", "all"):
        if os.geteuid() != 0:
            ap.error("Postfix instances need root")
        status = part_postfix(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
