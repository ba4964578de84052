"""One /metrics endpoint for every service of `postwarden run`, the counts
the traffic caused, and a Grafana dashboard that queries only metrics that
exist there.

Traffic through a real Postfix: a message through the noop milter, a
recipient the access rules reject, a sender whose SPF lookup gets SERVFAIL,
and Redis down the whole time (greylisting and stat flushes fail).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from postwarden.store.embedded import EmbeddedRedis
from tests.conftest import REPO
from tests.fixtures.dnsserver import DnsServer
from tests.harness.metrics import Samples, scrape, total
from tests.harness.ports import free_port, wait_for_unix_socket
from tests.harness.postfix import PostfixInstance, Xclient, make_message
from tests.harness.services import (
    ServiceConfig,
    postwarden_argv,
    start_supervisor,
    write_config,
)

pytestmark = pytest.mark.integration

DASHBOARD = REPO / "deploy" / "grafana" / "postwarden.json"
# Read from Redis at scrape time: absent while Redis is down (the first test).
FROM_REDIS = {"postwarden_bayes_learned", "postwarden_bayes_active"}


def dashboard_metrics() -> set[str]:
    """Every postwarden_* series name the dashboard's queries use."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert exprs, "the dashboard has queries"
    return {m for e in exprs for m in re.findall(r"\bpostwarden_[a-z_]+\b", e)}


def test_one_endpoint_counts_the_traffic_and_feeds_every_dashboard_query(
    postfix_factory: Callable[..., PostfixInstance],
    socket_dir: Path,
    tmp_path: Path,
) -> None:
    port = free_port()
    zone = {
        "pass.test": [("TXT", "v=spf1 +all")],
        "servfail.test": [("RCODE", "SERVFAIL")],
    }
    with DnsServer(zone) as dns_server:
        cfg = write_config(
            tmp_path / "config",
            socket_dir,
            str(tmp_path / "no-redis-here.sock"),  # Redis is down throughout
            milters=("noop",),
            checks=("access", "spf", "greylist"),
            overrides={
                "metrics": {"enabled": True, "listen": f"127.0.0.1:{port}"},
                "dns": {"nameservers": [dns_server.nameserver], "timeout": "2s"},
                "policyd": {
                    "access": {
                        "rules": [{"recipient": "blocked@example.net", "action": "REJECT no"}]
                    },
                    "spf": {"cache_ttl": 0},
                },
            },
        )
        supervisor = start_supervisor(cfg, tmp_path / "run.log")
        try:
            wait_for_unix_socket(Path(cfg.socket("noop").removeprefix("unix:")), 30)
            postfix = postfix_factory(
                smtpd_milters=[cfg.socket("noop")], policy_services=[cfg.socket("policyd")]
            )
            stranger = Xclient(addr="192.0.2.10", name="mx.stranger.test")
            # SPF passes, greylisting finds no Redis (on_error accept), the
            # noop milter stamps its header and reports its symbol
            sent = postfix.send("a@pass.test", "bob@example.net", xclient=stranger)
            assert sent.accepted, sent.replies
            # the access rule refuses one recipient
            refused = postfix.send(
                "a@pass.test", "blocked@example.net", xclient=stranger, rcpt_only=True
            )
            assert refused.rcpt_codes() == {"blocked@example.net": 554}
            # the sender's SPF lookup gets SERVFAIL: temperror, deferred
            deferred = postfix.send(
                "a@servfail.test", "bob@example.net", xclient=stranger, rcpt_only=True
            )
            assert deferred.rcpt_codes()["bob@example.net"] // 100 == 4

            samples = scrape(port)
            deadline = time.monotonic() + 30
            while total(samples, "postwarden_milter_messages_total") < 1:
                assert time.monotonic() < deadline, "the milter's decision never showed"
                time.sleep(0.1)
                samples = scrape(port)
        finally:
            supervisor.stop()
    assert supervisor.proc is not None and supervisor.proc.returncode == 0

    # Every dashboard query names a series the endpoint serves (the Bayes
    # ones need Redis: the next test).
    names = {name for name, _ in samples}
    assert sorted(dashboard_metrics() - names - FROM_REDIS) == []
    # Restarts are counted from 0, so the first one shows in increase().
    assert ("postwarden_supervisor_restarts_total", (("service", "noop"),)) in samples
    assert total(samples, "postwarden_supervisor_restarts_total") == 0
    # And the counts are the ones the traffic caused, from both services.
    assert total(samples, "postwarden_milter_messages_total", milter="noop") == 1
    assert total(samples, "postwarden_milter_decision_seconds_count", milter="noop") == 1
    assert total(samples, "postwarden_milter_symbols_total", symbol="NOOP_SEEN") == 1
    assert total(samples, "postwarden_check_decisions_total", check="access", verb="REJECT") == 1
    # access ran for all three recipients, SPF for the two it did not stop
    assert total(samples, "postwarden_policyd_check_seconds_count", check="access") == 3
    assert total(samples, "postwarden_policyd_check_seconds_count", check="spf") >= 2
    assert total(samples, "postwarden_dns_errors_total", kind="servfail") >= 1
    assert total(samples, "postwarden_redis_errors_total") >= 1
    assert total(samples, "postwarden_policyd_errors_total", kind="store") >= 1


def bayes_endpoint(
    tmp_path: Path, socket_dir: Path, redis_server: EmbeddedRedis, bayes: dict[str, Any]
) -> tuple[ServiceConfig, int]:
    """A config with the metrics endpoint on a free port and these
    milters.spam.bayes settings: (the written config, the port)."""
    port = free_port()
    cfg = write_config(
        tmp_path / "config",
        socket_dir,
        redis_server.socket,
        milters=("noop",),
        overrides={
            "metrics": {"enabled": True, "listen": f"127.0.0.1:{port}"},
            "milters": {"spam": {"bayes": bayes}},
        },
    )
    return cfg, port


def learn_one(cfg: ServiceConfig, kind: str, subject: str) -> dict[str, Any]:
    """`postwarden learn KIND -` of one message, as the Dovecot Junk loop runs it."""
    out = subprocess.run(
        [*postwarden_argv(), "learn", kind, "-c", str(cfg.path), "--json", "-"],
        input=make_message(subject=subject), capture_output=True, check=True,
    )  # fmt: skip
    summary: dict[str, Any] = json.loads(out.stdout)
    return summary


def scrape_under_run(cfg: ServiceConfig, port: int, log: Path) -> Samples:
    supervisor = start_supervisor(cfg, log)
    try:
        return scrape(port)
    finally:
        supervisor.stop()


def test_bayes_statistics_reach_the_endpoint_and_the_dashboard(
    socket_dir: Path, tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    cfg, port = bayes_endpoint(tmp_path, socket_dir, redis_server, {})
    # Given one message learned as spam (as the Dovecot Junk loop does)
    assert learn_one(cfg, "spam", "cheap pills")["learned"] == 1
    samples = scrape_under_run(cfg, port, tmp_path / "run.log")
    # Then the endpoint says so, and serves every series the dashboard's
    # Bayes panel queries
    assert total(samples, "postwarden_bayes_learned", **{"class": "spam"}) == 1
    assert total(samples, "postwarden_bayes_learned", **{"class": "ham"}) == 0
    assert total(samples, "postwarden_bayes_active") == 0  # min_learns not reached
    assert "postwarden_bayes_model_stale" not in {name for name, _ in samples}  # chi2
    assert dashboard_metrics() >= FROM_REDIS
    assert {name for name, _ in samples} >= FROM_REDIS


def test_the_svm_models_fit_time_and_staleness_reach_the_endpoint(
    socket_dir: Path, tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    bayes = {"method": "svm", "min_learns": 1}
    cfg, port = bayes_endpoint(tmp_path, socket_dir, redis_server, bayes)
    # Given a model fitted from one spam and one ham, then one more spam
    # learned that the model has not seen (a Junk move before the next refit)
    assert learn_one(cfg, "spam", "cheap pills")["model"] == "too few"
    assert learn_one(cfg, "ham", "release notes")["model"] == "fitted"
    assert learn_one(cfg, "spam", "cheap watches")["model"] == "not due"
    before = time.time()
    samples = scrape_under_run(cfg, port, tmp_path / "run.log")
    fitted = total(samples, "postwarden_bayes_model_fitted_timestamp_seconds")
    assert 0 < fitted <= before
    assert total(samples, "postwarden_bayes_model_stale") == 1
