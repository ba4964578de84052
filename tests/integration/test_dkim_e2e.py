"""End to end: Postfix -> `postwarden milter dkim` (and OpenDKIM) -> sink.

The test DNS server publishes the key; OpenDKIM (Debian `opendkim`) runs as
a milter of its own Postfix with the same key, so each side verifies what
the other signed through real Postfix instances.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postwarden.dkim_keys import dns_record, generate_key, write_private_key
from tests.fixtures.dnsserver import DnsServer
from tests.harness.opendkim import OpenDkim
from tests.harness.ports import shared_tempdir
from tests.harness.postfix import PostfixInstance, Xclient, make_message
from tests.harness.services import ServiceConfig, ServiceProcess
from tests.harness.sink import SmtpSink

pytestmark = pytest.mark.integration

PostfixFactory = Callable[..., PostfixInstance]
ConfigFactory = Callable[..., ServiceConfig]
ServiceFactory = Callable[..., ServiceProcess]

KEY = generate_key("rsa-sha256")
ED_KEY = generate_key("ed25519-sha256")
OUTSIDE = Xclient(addr="198.51.100.7", name="mail.sender.example")
SUBMISSION = Xclient(addr="192.0.2.10", login="alice")


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    zone = {
        "s1._domainkey.example.org": [("TXT", dns_record("example.org", "s1", KEY).value)],
        "ed1._domainkey.example.org": [("TXT", dns_record("example.org", "ed1", ED_KEY).value)],
        "spf.example": [("TXT", "v=spf1 ip4:198.51.100.0/24 ~all")],
        "_dmarc.spf.example": [("TXT", "v=DMARC1; p=reject")],
    }
    with DnsServer(zone) as server:
        yield server


@pytest.fixture
def key_files(tmp_path: Path) -> tuple[Path, Path]:
    rsa, ed = tmp_path / "s1.key", tmp_path / "ed1.key"
    write_private_key(rsa, KEY)
    write_private_key(ed, ED_KEY)
    return rsa, ed


@pytest.fixture
def dkim_service(
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
    dns_server: DnsServer,
    key_files: tuple[Path, Path],
) -> ServiceConfig:
    rsa, ed = key_files
    config = postwarden_config(
        milters=("dkim",),
        overrides={
            "dns": {"nameservers": [dns_server.nameserver], "timeout": "2s"},
            "milters": {
                "dkim": {
                    "authserv_id": "mx.example.net",
                    "keys": [
                        {"domain": "example.org", "selector": "s1", "key_file": str(rsa)},
                        {
                            "domain": "example.org",
                            "selector": "ed1",
                            "key_file": str(ed),
                            "algorithm": "ed25519-sha256",
                        },
                    ],
                }
            },
        },
    )
    postwarden_service(config, "milter", "dkim")
    return config


@pytest.fixture
def opendkim_factory(dns_server: DnsServer, key_files: tuple[Path, Path]) -> Iterator[
    Callable[[str], OpenDkim]
]:  # fmt: skip
    started: list[OpenDkim] = []
    base = shared_tempdir("pw-odk-")

    def make(mode: str) -> OpenDkim:
        n = len(started)
        milter = OpenDkim(
            base / f"o{n}", base / f"o{n}.sock", mode, dns_server.nameserver,
            "example.org", "s1", key_files[0],
        )  # fmt: skip
        started.append(milter.start())
        return milter

    yield make
    for m in started:
        m.stop()


def _unfolded(value: str | None) -> str:
    return re.sub(r"\s+", " ", value or "")


def _resend(postfix: PostfixInstance, raw: bytes, xclient: Xclient) -> None:
    # What the sink received, sent on again as a stranger's inbound mail.
    result = postfix.send("alice@example.org", "bob@example.net", raw, xclient=xclient)
    assert result.accepted, result.replies


def test_signed_on_submission_then_verified_inbound_through_postfix(
    dkim_service: ServiceConfig, postfix_factory: PostfixFactory, sink: SmtpSink
) -> None:
    postfix = postfix_factory(smtpd_milters=[dkim_service.socket("dkim")])
    # Given an authenticated submission
    data = make_message(subject="signed by postwarden", mail_from="alice@example.org")
    result = postfix.send("alice@example.org", "bob@example.net", data, xclient=SUBMISSION)
    assert result.accepted, result.replies
    [out] = sink.wait_for(1)
    # Then it carries an RSA and an Ed25519 signature, and no verdict of ours
    sigs = out.headers("DKIM-Signature")
    assert len(sigs) == 2
    assert out.header("Authentication-Results") is None
    # When the same bytes come back in from outside
    sink.clear()
    _resend(postfix, out.raw, OUTSIDE)
    [back] = sink.wait_for(1)
    ar = _unfolded(back.header("Authentication-Results"))
    assert ar.startswith("mx.example.net;")
    assert "dkim=pass header.d=example.org header.s=s1 header.a=rsa-sha256" in ar
    assert "dkim=pass header.d=example.org header.s=ed1 header.a=ed25519-sha256" in ar


def test_forged_authentication_results_are_removed_in_transit(
    dkim_service: ServiceConfig, postfix_factory: PostfixFactory, sink: SmtpSink
) -> None:
    postfix = postfix_factory(smtpd_milters=[dkim_service.socket("dkim")])
    data = make_message(
        subject="trust me",
        extra_headers={"Authentication-Results": "mx.example.net; dkim=pass header.d=bank.example"},
    )
    _resend(postfix, data, OUTSIDE)
    [got] = sink.wait_for(1)
    assert [_unfolded(v) for v in got.headers("Authentication-Results")] == [
        "mx.example.net; dkim=none; arc=none; dmarc=none header.from=example.org"
    ]


def test_opendkim_verifies_what_postwarden_signs(
    dkim_service: ServiceConfig,
    postfix_factory: PostfixFactory,
    opendkim_factory: Callable[[str], OpenDkim],
    sink: SmtpSink,
) -> None:
    signer = postfix_factory(smtpd_milters=[dkim_service.socket("dkim")])
    verifier = postfix_factory(smtpd_milters=[opendkim_factory("v").socket])
    data = make_message(subject="cross-check", mail_from="alice@example.org")
    assert signer.send("alice@example.org", "bob@example.net", data, xclient=SUBMISSION).accepted
    [signed] = sink.wait_for(1)
    sink.clear()
    _resend(verifier, signed.raw, OUTSIDE)
    [checked] = sink.wait_for(1)
    ar = " ".join(_unfolded(v) for v in checked.headers("Authentication-Results"))
    assert "opendkim.test" in ar
    # Both of our signatures pass OpenDKIM 2.11 (its comment may hold a ";").
    clauses = re.sub(r"\([^)]*\)", "", ar).split(";")
    passed = {
        re.search(r"header\.a=(\S+)", c).group(1)  # type: ignore[union-attr]
        for c in clauses
        if c.strip().startswith("dkim=pass") and "header.d=example.org" in c
    }
    assert passed == {"rsa-sha256", "ed25519-sha256"}, ar


def test_postwarden_verifies_what_opendkim_signs(
    dkim_service: ServiceConfig,
    postfix_factory: PostfixFactory,
    opendkim_factory: Callable[[str], OpenDkim],
    sink: SmtpSink,
) -> None:
    signer = postfix_factory(smtpd_milters=[opendkim_factory("s").socket])
    verifier = postfix_factory(smtpd_milters=[dkim_service.socket("dkim")])
    data = make_message(subject="signed by opendkim", mail_from="alice@example.org")
    # From 127.0.0.1 (OpenDKIM's InternalHosts): OpenDKIM signs it
    assert signer.send("alice@example.org", "bob@example.net", data).accepted
    [signed] = sink.wait_for(1)
    assert signed.header("DKIM-Signature") is not None
    sink.clear()
    _resend(verifier, signed.raw, OUTSIDE)
    [checked] = sink.wait_for(1)
    ar = _unfolded(checked.header("Authentication-Results"))
    assert "dkim=pass header.d=example.org header.s=s1 header.a=rsa-sha256" in ar, ar


def test_dmarc_uses_the_spf_result_policyd_prepended(
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
    postfix_factory: PostfixFactory,
    dns_server: DnsServer,
    sink: SmtpSink,
) -> None:
    # Given policyd's SPF check and the dkim milter enforcing DMARC
    config = postwarden_config(
        milters=("dkim",),
        checks=("spf",),
        overrides={
            "dns": {"nameservers": [dns_server.nameserver], "timeout": "2s"},
            "policyd": {"spf": {"receiver": "mx.example.net", "query_timeout": "1s"}},
            "milters": {"dkim": {"authserv_id": "mx.example.net", "dmarc_enforcement": "enforce"}},
        },
    )
    postwarden_service(config, "policyd")
    postwarden_service(config, "milter", "dkim")
    postfix = postfix_factory(
        policy_services=[config.socket("policyd")], smtpd_milters=[config.socket("dkim")]
    )
    data = make_message(subject="unsigned", mail_from="alice@spf.example")
    # When an SPF-authorised client sends unsigned mail from spf.example
    ok = postfix.send(
        "alice@spf.example", "bob@example.net", data,
        xclient=Xclient(addr="198.51.100.7", helo="mail.spf.example"),
    )  # fmt: skip
    # Then the milter saw policyd's Received-SPF: aligned SPF pass, DMARC pass
    assert ok.accepted, ok.replies
    [got] = sink.wait_for(1)
    ar = _unfolded(got.header("Authentication-Results"))
    assert "dmarc=pass (p=reject sp=reject dis=none) header.from=spf.example" in ar
    # And from a client SPF does not authorise (~all: softfail, delivered by
    # policyd), DMARC fails and p=reject is enforced
    bad = postfix.send(
        "alice@spf.example", "bob@example.net", data,
        xclient=Xclient(addr="203.0.113.9", helo="mail.spf.example"),
    )  # fmt: skip
    assert bad.code("data") == 550
    assert "5.7.1 Email rejected per DMARC policy for spf.example" in bad.text("data")
