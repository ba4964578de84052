"""The store against Redis Cluster and Sentinel, both real redis-server processes.

A one-node cluster still enforces CROSSSLOT for multi-key scripts, so these
tests prove the hash tags in `store/keys.py` keep every script legal on a
cluster, and that the checks which use several keys per call work there.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from policyd.check import CheckContext
from policyd.pipeline import build_pipeline, evaluate
from policyd.protocol import PolicyRequest, RequestParser, encode_request
from postwarden.bayes import learning
from postwarden.bayes.classifier import classify
from postwarden.bayes.refit import refit
from postwarden.bayes.sources import Found
from postwarden.bayes.store import GLOBAL_SCOPE, BayesStore, scope_for
from postwarden.bayes.tokens import parse
from postwarden.clock import ManualClock
from postwarden.config import ConfigProblem, load_config_text
from postwarden.config.schema import RedisSettings, SentinelSettings
from postwarden.config.sections.bayes import BayesSettings, CombineMethod
from postwarden.config.units import RedisUrl
from postwarden.store.client import open_async_store, open_store
from tests.unit.postwarden.test_bayes import ham, spam


def free_port_pair() -> int:
    """A port P with P+10000 free too (the cluster bus port)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except redis.exceptions.RedisError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_redis(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["redis-server", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("cluster")
    port = free_port_pair()
    proc = start_redis(
        [
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        d,
    )
    try:
        plain = redis.Redis(port=port)
        wait_until(plain.ping, "cluster node")
        plain.execute_command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        wait_until(
            lambda: b"cluster_state:ok" in plain.execute_command("CLUSTER", "INFO"),
            "cluster_state:ok",
        )
        plain.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def sentinel_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ...]]:
    d = tmp_path_factory.mktemp("sentinel")
    master_port = free_port_pair()
    sentinel_port = free_port_pair()
    master = start_redis(
        ["--port", str(master_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], d
    )
    conf = d / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {d}\n"
        f"sentinel monitor pwmaster 127.0.0.1 {master_port} 1\n"
    )
    sentinel = start_redis([str(conf), "--sentinel"], d)
    try:
        probe = redis.Redis(port=sentinel_port)
        wait_until(
            lambda: probe.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "pwmaster"),
            "sentinel knows the master",
        )
        probe.close()
        yield (f"127.0.0.1:{sentinel_port}",)
    finally:
        stop(sentinel)
        stop(master)


def rcpt(**attrs: str) -> PolicyRequest:
    base = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "client_address": "192.0.2.10",
        "client_name": "unknown",
        "helo_name": "mx.example.org",
        "sender": "alice@example.org",
        "recipient": "bob@example.net",
        "instance": "i1",
    }
    base.update(attrs)
    (req,) = RequestParser().feed(encode_request(base))
    assert isinstance(req, PolicyRequest)
    return req


CHECKS = """\
redis: {{url: "{url}", cluster: true, prefix: "pwc:"}}
policyd:
  spf: {{enabled: false}}
  greylist: {{enabled: true}}
  ratelimit:
    enabled: true
    rules:
      - {{name: per_sender, key: sender, windows: [{{limit: 2, per: 1m}}]}}
      - {{name: per_domain, key: recipient_domain, windows: [{{limit: 100, per: 1h}}]}}
      - {{name: per_client, key: client_address, windows: [{{limit: 100, per: 1h}}]}}
"""


def test_cluster_runs_greylist_and_multi_rule_ratelimit_scripts(cluster_url: str) -> None:
    settings = load_config_text(CHECKS.format(url=cluster_url))
    problems: list[ConfigProblem] = []
    checks = build_pipeline(settings, problems)
    assert problems == []
    assert [c.name for c in checks] == ["ratelimit", "greylist"]

    async def go() -> list[str]:
        store = open_async_store(settings.redis)
        ctx = CheckContext(settings=settings, store=store, clock=ManualClock())
        out = []
        try:
            for i in range(3):
                req = rcpt(recipient=f"r{i}@example.net", instance=f"m{i}")
                out.append((await evaluate(checks, req, ctx)).decision.action_line())
        finally:
            await store.close()
        return out

    out = asyncio.run(go())
    # Two messages get past the limit of 2 and are greylisted; the third is
    # refused by the rate limit before greylisting sees it.
    assert out[0].startswith("DEFER_IF_PERMIT 4.7.1")
    assert out[1].startswith("DEFER_IF_PERMIT 4.7.1")
    assert out[2].startswith("450 4.7.1 Rate limit exceeded")


def test_cluster_sync_store_counts(cluster_url: str) -> None:
    store = open_store(RedisSettings(url=RedisUrl.parse(cluster_url), cluster=True, prefix="pwc:"))
    store.count("cluster.test", 3)
    assert store.redis.get(store.keys.stat("cluster.test")) == b"3"
    store.close()


def test_sentinel_finds_the_master_for_sync_and_async_stores(
    sentinel_hosts: tuple[str, ...],
) -> None:
    settings = replace(
        RedisSettings(prefix="pws:"),
        sentinel=SentinelSettings(hosts=sentinel_hosts, service="pwmaster"),
    )
    store = open_store(settings)
    store.count("sentinel.test")
    assert store.redis.get(store.keys.stat("sentinel.test")) == b"1"
    store.close()

    async def go() -> bytes:
        astore = open_async_store(settings)
        try:
            await astore.count("sentinel.test")
            return bytes(await astore.redis.get(astore.keys.stat("sentinel.test")))
        finally:
            await astore.close()

    assert asyncio.run(go()) == b"2"


def test_cluster_learns_refits_and_classifies_with_the_svm_model(cluster_url: str) -> None:
    store = open_store(RedisSettings(url=RedisUrl.parse(cluster_url), cluster=True, prefix="pwc:"))
    try:
        bs = BayesStore(store, BayesSettings(min_learns=4, method=CombineMethod.SVM))
        for cls, make in (("spam", spam), ("ham", ham)):
            items = [Found(f"{cls}{n}", make(n)) for n in range(4)]
            assert learning.learn(bs, GLOBAL_SCOPE, cls, items).learned == 4
        assert refit(bs, GLOBAL_SCOPE).status == "fitted"
        s = classify(bs, bs.settings, parse(spam(99)), GLOBAL_SCOPE)
        h = classify(bs, bs.settings, parse(ham(99)), GLOBAL_SCOPE)
        assert s.margin is not None and h.margin is not None and s.margin > h.margin
        assert s.probability is not None and s.probability > 0.5
    finally:
        store.close()


def test_cluster_upkeep_finds_every_user_scope_and_drops_the_svm_data(cluster_url: str) -> None:
    store = open_store(RedisSettings(url=RedisUrl.parse(cluster_url), cluster=True, prefix="pwu:"))
    try:
        settings = BayesSettings(min_learns=2, method=CombineMethod.SVM, per_user=True)
        bs = BayesStore(store, settings)
        # Users' scopes hash to different slots, so to different nodes
        users = [f"user{n}@example.org" for n in range(6)]
        for user in users:
            scope = scope_for(settings, user)
            for cls, make in (("spam", spam), ("ham", ham)):
                items = [Found(f"{cls}{n}", make(n)) for n in range(2)]
                assert learning.learn(bs, scope, cls, items).learned == 2
            assert refit(bs, scope).status == "fitted"
        assert bs.scopes() == sorted(scope_for(settings, u) for u in users)
        chi2 = BayesStore(store, BayesSettings(min_learns=2, per_user=True))
        assert chi2.drop_svm_data() == 4 * len(users)
        for user in users:
            scope = scope_for(settings, user)
            assert chi2.model_info(scope) is None
            assert list(chi2.learned_docs(scope)) == []
    finally:
        store.close()
