"""The dkim milter engine: signing, verifying, Authentication-Results.

Keys are published by the loopback DNS server (tests/fixtures/dnsserver.py);
key records are cached in the session's real Redis.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from milters.context import MessageContext, ServiceContext
from milters.dkim import DkimEngine, build, dmarc
from milters.message import Action, Envelope, HeaderOp, Message, Verdict
from milters.pipeline import apply_edits
from postwarden.budget import Budget
from postwarden.clock import Clock, ManualClock, SystemClock
from postwarden.config import ConfigError
from postwarden.config.load import load_config_text
from postwarden.config.schema import Settings
from postwarden.dkim_keys import PrivateKey, dns_record, generate_key, write_private_key
from postwarden.errors import StoreUnavailable
from postwarden.store.client import Store
from tests.fixtures.dnsserver import TIMEOUT, DnsServer, Zone

NOW = 2_000_000_000.0  # 2033: after any t= dkimpy writes with the real clock
RSA = generate_key("rsa-sha256")
RSA_NEXT = generate_key("rsa-sha256")
ED = generate_key("ed25519-sha256")
FOREIGN = generate_key("rsa-sha256")

ZONE: Zone = {
    "s1._domainkey.example.org": [("TXT", dns_record("example.org", "s1", RSA).value)],
    "s2._domainkey.example.org": [("TXT", dns_record("example.org", "s2", RSA_NEXT).value)],
    "ed1._domainkey.example.org": [("TXT", dns_record("example.org", "ed1", ED).value)],
    "f1._domainkey.sender.example": [("TXT", dns_record("sender.example", "f1", FOREIGN).value)],
    "old._domainkey.sender.example": [("TXT", "v=DKIM1; k=rsa; p=")],
    "slow._domainkey.slow.example": [TIMEOUT],
    "f1._domainkey.fwd.example": [("TXT", dns_record("fwd.example", "f1", FOREIGN).value)],
    "_dmarc.example.org": [("TXT", "v=DMARC1; p=reject")],
    "_dmarc.sender.example": [("TXT", "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@x")],
    "_dmarc.strict.sender.example": [("TXT", "v=DMARC1; p=reject; adkim=s; aspf=s")],
    "_dmarc.pct0.example": [("TXT", "v=DMARC1; p=reject; pct=0")],
    "_dmarc.pct100.example": [("TXT", "v=DMARC1; p=reject; pct=100")],
    "_dmarc.pct50.example": [("TXT", "v=DMARC1; p=reject; pct=50")],
}

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Date: Wed, 02 Dec 2026 12:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n\r\nthe numbers are attached.\r\n"
)

INBOUND = Envelope(client_address=ipaddress.ip_address("192.0.2.7"), queue_id="Q1")
OUTBOUND = Envelope(
    client_address=ipaddress.ip_address("192.0.2.7"), auth_user="alice", queue_id="Q2"
)


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(ZONE, ttl=300) as server:
        yield server


def _key_file(directory: Path, name: str, key: PrivateKey) -> Path:
    path = directory / name
    if not path.exists():
        write_private_key(path, key)
    return path


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir()
    return d


Make = Callable[..., DkimEngine]


@pytest.fixture
def make_engine(dns_server: DnsServer, keydir: Path, store: Store) -> Iterator[Make]:
    contexts: list[ServiceContext] = []

    def make(
        keys: str = "rsa",
        extra: str = "",
        store_factory: object = None,
        authserv_id: str = "mx.example.net",
    ) -> DkimEngine:
        entries = {
            "rsa": f"{{domain: example.org, selector: s1, key_file: "
            f"{_key_file(keydir, 'rsa.pem', RSA)}}}",
            "ed": f"{{domain: example.org, selector: ed1, algorithm: ed25519-sha256, "
            f"key_file: {_key_file(keydir, 'ed.pem', ED)}}}",
            "foreign": f"{{domain: sender.example, selector: f1, key_file: "
            f"{_key_file(keydir, 'foreign.pem', FOREIGN)}}}",
            "next": f"{{domain: example.org, selector: s2, not_before: '2034-01-01', "
            f"key_file: {_key_file(keydir, 'next.pem', RSA_NEXT)}}}",
        }
        listed = ", ".join(entries[k] for k in keys.split("+") if k)
        settings = load_config_text(
            f"dns: {{nameservers: ['{dns_server.nameserver}'], timeout: 300ms}}\n"
            "milters:\n"
            "  dkim:\n"
            f"    authserv_id: {authserv_id}\n"
            f"    keys: [{listed}]\n" + extra
        )
        service = ServiceContext(
            settings,
            clock=ManualClock(NOW),
            store_factory=store_factory or (lambda _s: store),  # type: ignore[arg-type]
        )
        contexts.append(service)
        engine = build(service)
        assert engine is not None
        return engine

    yield make
    for c in contexts:
        c._store = None  # the fixture's store is closed by its own fixture


def run(
    engine: DkimEngine, raw: bytes, env: Envelope, budget: float = 10.0, clock: Clock | None = None
) -> Verdict:
    service = ServiceContext(Settings(), clock=clock or ManualClock(NOW))
    # The engine keeps its own service resources; the message context only
    # carries the budget and clock here.
    ctx = MessageContext(service, Budget(budget), queue_id=env.queue_id)
    return engine.evaluate(Message.from_bytes(raw), env, ctx)


def signed(engine: DkimEngine, raw: bytes = MESSAGE, clock: Clock | None = None) -> bytes:
    verdict = run(engine, raw, OUTBOUND, clock=clock)
    assert any(e.name == "DKIM-Signature" for e in verdict.header_edits), verdict.reason
    return apply_edits(Message.from_bytes(raw), verdict).as_bytes()


def authentication_results(verdict: Verdict) -> str:
    [value] = [
        e.value
        for e in verdict.header_edits
        if e.name == "Authentication-Results" and e.op is HeaderOp.INSERT
    ]
    return re.sub(r"\s+", " ", value)


def dkim_results(verdict: Verdict) -> list[str]:
    return [d["result"] for d in verdict.details["dkim"]]  # type: ignore[attr-defined]


# -- signing, then verifying -----------------------------------------------


def test_rsa_signature_made_through_openssl_verifies_as_pass(make_engine: Make) -> None:
    engine = make_engine()
    # Signed now by the real clock: dkimpy checks t= against time.time().
    message = signed(engine, clock=SystemClock())
    verdict = run(engine, message, INBOUND)
    ar = authentication_results(verdict)
    assert ar.startswith("mx.example.net;")
    assert "dkim=pass header.d=example.org header.s=s1 header.a=rsa-sha256 header.b=" in ar
    # dkimpy's own verifier agrees, independently of our engine.
    record = dns_record("example.org", "s1", RSA).value.encode()
    assert dkim.verify(message, dnsfunc=lambda name, timeout=5: record)


def test_signature_is_relaxed_and_oversigns_from(make_engine: Make) -> None:
    message = signed(make_engine())
    sig = Message.from_bytes(message).get("DKIM-Signature")
    tags = dkim.util.parse_tag_value(sig.encode())
    assert tags[b"c"] == b"relaxed/relaxed"
    names = [h.strip() for h in tags[b"h"].decode().split(":")]
    assert names.count("from") == 2  # one From + one extra: nobody can add another
    assert names.count("subject") == 2
    assert tags[b"t"] == str(int(NOW)).encode()


def test_ed25519_signature_verifies_as_pass(make_engine: Make) -> None:
    engine = make_engine("ed")
    verdict = run(engine, signed(engine), INBOUND)
    assert "dkim=pass header.d=example.org header.s=ed1 header.a=ed25519-sha256" in (
        authentication_results(verdict)
    )


def test_rsa_and_ed25519_keys_give_two_signatures_that_both_pass(make_engine: Make) -> None:
    engine = make_engine("rsa+ed")
    message = signed(engine)
    assert len(Message.from_bytes(message).get_all("DKIM-Signature")) == 2
    verdict = run(engine, message, INBOUND)
    assert dkim_results(verdict) == ["pass", "pass"]


def test_tampered_body_fails_with_body_hash_mismatch(make_engine: Make) -> None:
    engine = make_engine()
    message = signed(engine).replace(b"numbers are attached", b"numbers are wired to us")
    verdict = run(engine, message, INBOUND)
    assert dkim_results(verdict) == ["fail"]
    assert 'reason="body hash mismatch"' in authentication_results(verdict)


def test_tampered_signed_header_fails(make_engine: Make) -> None:
    engine = make_engine()
    message = signed(engine).replace(b"quarterly numbers", b"urgent: new bank account")
    verdict = run(engine, message, INBOUND)
    assert dkim_results(verdict) == ["fail"]
    assert "signature did not verify" in authentication_results(verdict)


def test_added_from_header_breaks_an_oversigned_signature(make_engine: Make) -> None:
    engine = make_engine()
    message = b"From: Mallory <m@evil.example>\r\n" + signed(engine)
    assert dkim_results(run(engine, message, INBOUND)) == ["fail"]


def _pkcs1(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def test_l_tag_with_appended_content_is_policy_not_pass(make_engine: Make) -> None:
    # Given a signature with l= (made by dkimpy itself, which can write l=)
    header = dkim.DKIM(MESSAGE).sign(
        b"f1", b"sender.example", _pkcs1(FOREIGN), include_headers=[b"from"], length=True
    )
    engine = make_engine()
    # When nothing is appended it passes; when content is appended, it is policy
    assert dkim_results(run(engine, header + MESSAGE, INBOUND)) == ["pass"]
    appended = header + MESSAGE + b"\r\nClick http://evil.example/ to claim.\r\n"
    verdict = run(engine, appended, INBOUND)
    assert dkim_results(verdict) == ["policy"]
    assert "body bytes unsigned" in authentication_results(verdict)


def test_expired_signature_fails(make_engine: Make) -> None:
    engine = make_engine(extra="    signature_ttl: 1h\n")
    message = signed(engine)
    assert dkim_results(run(engine, message, INBOUND)) == ["pass"]
    # The same engine, with the clock moved past x=
    later = ServiceContext(Settings(), clock=ManualClock(NOW + 7200))
    ctx = MessageContext(later, Budget(10.0))
    verdict = engine.evaluate(Message.from_bytes(message), INBOUND, ctx)
    assert dkim_results(verdict) == ["fail"]
    assert "signature expired" in authentication_results(verdict)


def test_revoked_key_is_permerror(make_engine: Make) -> None:
    header = dkim.DKIM(MESSAGE).sign(
        b"old", b"sender.example", _pkcs1(FOREIGN), include_headers=[b"from"]
    )
    verdict = run(make_engine(), header + MESSAGE, INBOUND)
    assert dkim_results(verdict) == ["permerror"]
    assert "key revoked" in authentication_results(verdict)


def test_rsa_sha1_signature_is_not_accepted(make_engine: Make) -> None:
    header = dkim.DKIM(MESSAGE).sign(
        b"f1", b"sender.example", _pkcs1(FOREIGN), signature_algorithm=b"rsa-sha1",
        include_headers=[b"from"],
    )  # fmt: skip
    verdict = run(make_engine(), header + MESSAGE, INBOUND)
    assert dkim_results(verdict) == ["permerror"]
    assert "RFC 8301" in verdict.details["dkim"][0]["reason"]  # type: ignore[index]


def test_key_smaller_than_min_key_bits_is_policy(make_engine: Make) -> None:
    engine = make_engine(extra="    min_key_bits: 4096\n")
    verdict = run(engine, signed(engine), INBOUND)
    assert dkim_results(verdict) == ["policy"]
    assert "key too small (2048 bits)" in authentication_results(verdict)


# -- malformed input: a result, never an exception ----------------------------


def _with_signature(value: str) -> bytes:
    return f"DKIM-Signature: {value}\r\n".encode() + MESSAGE


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("v=1; a=rsa-sha256; d=example.org; s=s1; h=from; bh=AAAA; b=%%%not base64",
         "not valid base64"),
        ("v=1; a=rsa-sha512; d=example.org; s=s1; h=from; bh=AAAA; b=AAAA",
         "unknown signature algorithm"),
        ("v=1; a=rsa-sha256; d=example.org; h=from; bh=AAAA; b=AAAA", "missing"),
        ("this is not a tag list at all", "malformed signature"),
        ("v=1; a=rsa-sha256; d=example.org; s=s1; h=from; bh=AAAA; b=AAAA; l=" + "9" * 400,
         "l= value"),
    ],
    ids=["bad-base64", "unknown-algorithm", "missing-s", "not-tags", "absurd-l"],
)  # fmt: skip
def test_malformed_signature_is_permerror(make_engine: Make, value: str, reason: str) -> None:
    verdict = run(make_engine(), _with_signature(value), INBOUND)
    assert dkim_results(verdict) == ["permerror"]
    assert reason in verdict.details["dkim"][0]["reason"]  # type: ignore[index]


def test_fifty_signatures_cost_at_most_max_signatures_lookups(
    make_engine: Make, dns_server: DnsServer
) -> None:
    value = "v=1; a=rsa-sha256; d=many.example; s=k{n}; h=from; bh=AAAA; b=AAAA"
    message = (
        b"".join(f"DKIM-Signature: {value.format(n=n)}\r\n".encode() for n in range(50)) + MESSAGE
    )
    dns_server.clear_queries()
    verdict = run(make_engine(), message, INBOUND)
    assert dkim_results(verdict) == ["permerror"] * 5
    assert verdict.details["signatures_not_evaluated"] == 45
    assert len([q for q in dns_server.queries if q.name.endswith("many.example")]) <= 5


def test_dns_that_never_answers_gives_temperror_within_the_budget(make_engine: Make) -> None:
    value = "v=1; a=rsa-sha256; d=slow.example; s=slow; h=from; bh=AAAA; b=AAAA"
    message = b"".join(f"DKIM-Signature: {value}\r\n".encode() for _ in range(5)) + MESSAGE
    # Five lookups of 300ms each would need 1.5s; the budget is 1s. Each
    # signature still gets a result (temperror), and no exception escapes.
    verdict = run(make_engine(), message, INBOUND, budget=1.0)
    results = dkim_results(verdict)
    assert len(results) == 5
    assert set(results) == {"temperror"}


def test_bare_lf_and_8bit_headers_sign_and_verify(make_engine: Make) -> None:
    engine = make_engine()
    raw = MESSAGE.replace(b"\r\n", b"\n").replace(
        b"Subject: quarterly numbers", "Subject: Zahlen für März".encode()
    )
    verdict = run(engine, signed(engine, raw), INBOUND)
    assert dkim_results(verdict) == ["pass"]


def test_unsigned_message_gets_dkim_none(make_engine: Make) -> None:
    verdict = run(make_engine(), MESSAGE, INBOUND)
    assert authentication_results(verdict) == (
        "mx.example.net; dkim=none; arc=none;"
        " dmarc=fail (p=reject sp=reject dis=none) header.from=example.org policy.dmarc=reject"
    )
    assert "not signed: client neither authenticated nor trusted" in verdict.reason


# -- Authentication-Results forgery (RFC 8601 section 5) ----------------------


def test_forged_authentication_results_with_our_id_are_removed_others_kept(
    make_engine: Make,
) -> None:
    raw = (
        b"Authentication-Results: mx.example.net; dkim=pass header.d=bank.example\r\n"
        b"Authentication-Results: other.example; spf=pass\r\n"
        b"Authentication-Results: (comment) MX.EXAMPLE.NET 1; dmarc=pass\r\n" + MESSAGE
    )
    verdict = run(make_engine(), raw, INBOUND)
    out = apply_edits(Message.from_bytes(raw), verdict)
    values = [re.sub(r"\s+", " ", v) for v in out.get_all("Authentication-Results")]
    assert values == [
        "mx.example.net; dkim=none; arc=none;"
        " dmarc=fail (p=reject sp=reject dis=none) header.from=example.org policy.dmarc=reject",
        "other.example; spf=pass",
    ]


# -- when not to sign -----------------------------------------------------------


def test_foreign_from_domain_is_not_signed_and_the_reason_is_given(make_engine: Make) -> None:
    raw = MESSAGE.replace(b"alice@example.org", b"alice@elsewhere.example")
    verdict = run(make_engine(), raw, OUTBOUND)
    assert not [e for e in verdict.header_edits if e.name == "DKIM-Signature"]
    assert verdict.reason == "not signed: no key for elsewhere.example"


def test_message_already_signed_by_us_is_not_signed_again(make_engine: Make) -> None:
    engine = make_engine()
    verdict = run(engine, signed(engine), OUTBOUND)
    assert verdict.reason == "not signed: already carries our signature"


def test_trusted_network_client_is_signed(make_engine: Make) -> None:
    env = Envelope(client_address=ipaddress.ip_address("127.0.0.1"))
    verdict = run(make_engine(), MESSAGE, env)
    assert verdict.details["origin"] == "trusted_networks"
    assert verdict.reason.startswith("signed d=example.org s=s1")


def test_configured_daemon_name_is_signed(make_engine: Make) -> None:
    engine = make_engine(extra="    sign_daemon_names: [submission]\n")
    env = Envelope(client_address=ipaddress.ip_address("192.0.2.7"), daemon_name="submission")
    assert run(engine, MESSAGE, env).details["origin"] == "daemon_name=submission"


def test_wildcard_key_signs_subdomains_with_the_parent_domain(
    dns_server: DnsServer, keydir: Path, store: Store
) -> None:
    settings = load_config_text(
        "milters:\n  dkim:\n    keys: [{domain: '*.example.org', selector: s1, "
        f"key_file: {_key_file(keydir, 'rsa.pem', RSA)}}}]\n"
    )
    engine = build(ServiceContext(settings, clock=ManualClock(NOW)))
    assert engine is not None
    raw = MESSAGE.replace(b"alice@example.org", b"alice@sales.example.org")
    assert run(engine, raw, OUTBOUND).reason == "signed d=example.org s=s1 a=rsa-sha256"


def test_rotated_key_signs_only_from_its_date(make_engine: Make) -> None:
    engine = make_engine("rsa+next")
    assert run(engine, MESSAGE, OUTBOUND).details["signed"] == ["d=example.org s=s1 a=rsa-sha256"]
    later = ServiceContext(Settings(), clock=ManualClock(2_100_000_000.0))  # 2036
    ctx = MessageContext(later, Budget(10))
    verdict = engine.evaluate(Message.from_bytes(MESSAGE), OUTBOUND, ctx)
    assert verdict.details["signed"] == ["d=example.org s=s2 a=rsa-sha256"]


# -- the key cache --------------------------------------------------------------


def test_key_records_are_cached_in_redis_with_their_ttl(
    make_engine: Make, dns_server: DnsServer, store: Store
) -> None:
    engine = make_engine()
    message = signed(engine)
    dns_server.clear_queries()
    assert dkim_results(run(engine, message, INBOUND)) == ["pass"]
    key = store.keys.dkim_key_record("s1._domainkey.example.org")
    assert 0 < store.redis.ttl(key) <= 300
    # A second engine (another milter process) finds it in Redis, not DNS.
    engine2 = make_engine()
    dns_server.clear_queries()
    assert dkim_results(run(engine2, message, INBOUND)) == ["pass"]
    assert dns_server.queries_for("s1._domainkey.example.org") == []


@pytest.mark.expect_log("WARNING", "dkim key cache unavailable")
def test_redis_down_still_verifies_through_dns(make_engine: Make) -> None:
    def no_redis(_settings: Settings) -> Store:
        raise StoreUnavailable("redis unavailable: connection refused")

    engine = make_engine(store_factory=no_redis)
    verdict = run(engine, signed(engine), INBOUND)
    assert dkim_results(verdict) == ["pass"]


# -- config ------------------------------------------------------------------------


def test_missing_key_file_is_a_config_error_with_line(tmp_path: Path) -> None:
    text = (
        "milters:\n  dkim:\n    keys:\n"
        f"      - {{domain: example.org, selector: s1, key_file: {tmp_path}/nope.pem}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "pw.yaml")
    # (the entry also lacks a usable key_file, which is reported second)
    problem = info.value.problems[0]
    assert (problem.file, problem.line) == ("pw.yaml", 4)
    assert "file not found" in str(problem)


def test_key_file_of_the_wrong_algorithm_is_a_config_error(keydir: Path) -> None:
    path = _key_file(keydir, "rsa.pem", RSA)
    text = (
        "milters:\n  dkim:\n    keys:\n"
        f"      - {{domain: example.org, selector: s1, algorithm: ed25519-sha256, "
        f"key_file: {path}}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "pw.yaml")
    assert "holds an RSA key, but algorithm is ed25519-sha256" in str(info.value.problems[0])
    assert info.value.problems[0].line == 4


def test_unreadable_key_file_is_a_config_error(keydir: Path) -> None:
    path = keydir / "garbage.pem"
    path.write_bytes(base64.b64encode(b"x" * 10))
    text = (
        f"milters:\n  dkim:\n    keys: [{{domain: example.org, selector: s1, key_file: {path}}}]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "pw.yaml")
    assert "neither a PEM key nor a base64 Ed25519 seed" in str(info.value.problems[0])


# -- DMARC (RFC 7489) -----------------------------------------------------------


def _signed_by_sender(raw: bytes) -> bytes:
    """Signed with d=sender.example by dkimpy (another sender's MTA)."""
    header: bytes = dkim.DKIM(raw).sign(
        b"f1", b"sender.example", _pkcs1(FOREIGN), include_headers=[b"from", b"subject"]
    )
    return header + raw


def _from(domain: str) -> bytes:
    return MESSAGE.replace(b"alice@example.org", f"alice@{domain}".encode())


ENFORCE = "    dmarc_enforcement: enforce\n"


def test_dmarc_passes_with_our_own_aligned_signature(make_engine: Make) -> None:
    engine = make_engine()
    verdict = run(engine, signed(engine), INBOUND)
    assert "dmarc=pass (p=reject sp=reject dis=none) header.from=example.org" in (
        authentication_results(verdict)
    )


def test_dmarc_relaxed_alignment_uses_the_organisational_domain(make_engine: Make) -> None:
    # From news.sender.example has no record: the org domain's applies (6.6.3)
    verdict = run(make_engine(), _signed_by_sender(_from("news.sender.example")), INBOUND)
    ar = authentication_results(verdict)
    assert "dkim=pass header.d=sender.example" in ar
    assert "dmarc=pass (p=reject sp=quarantine dis=none) header.from=news.sender.example" in ar


def test_dmarc_strict_alignment_refuses_a_parent_domain_signature(make_engine: Make) -> None:
    raw = _signed_by_sender(_from("strict.sender.example"))
    verdict = run(make_engine(extra=ENFORCE), raw, INBOUND)
    assert verdict.details["dmarc"] == "fail"
    assert verdict.action is Action.REJECT


def test_dmarc_fail_is_only_reported_by_default(make_engine: Make) -> None:
    verdict = run(make_engine(), _from("sender.example"), INBOUND)
    assert verdict.action is Action.ACCEPT
    assert "dmarc=fail (p=reject sp=quarantine dis=none) header.from=sender.example" in (
        authentication_results(verdict)
    )


def test_dmarc_reject_is_enforced_with_550_naming_the_policy(make_engine: Make) -> None:
    verdict = run(make_engine(extra=ENFORCE), _from("sender.example"), INBOUND)
    assert verdict.action is Action.REJECT
    assert str(verdict.reply) == "550 5.7.1 Email rejected per DMARC policy for sender.example"


def test_dmarc_subdomain_policy_sp_quarantines(make_engine: Make) -> None:
    verdict = run(make_engine(extra=ENFORCE), _from("news.sender.example"), INBOUND)
    assert verdict.action is Action.QUARANTINE
    assert "dis=quarantine" in authentication_results(verdict)


def test_dmarc_names_the_policy_that_applies_to_a_subdomain(make_engine: Make) -> None:
    # The spam milter scores policy.dmarc: sp= here, not the record's p=reject.
    ar = authentication_results(run(make_engine(), _from("news.sender.example"), INBOUND))
    assert "header.from=news.sender.example policy.dmarc=quarantine" in ar
    ar = authentication_results(run(make_engine(), _from("sender.example"), INBOUND))
    assert "header.from=sender.example policy.dmarc=reject" in ar


def test_dmarc_none_without_a_policy(make_engine: Make) -> None:
    verdict = run(make_engine(extra=ENFORCE), _from("nopolicy.example"), INBOUND)
    assert verdict.action is Action.ACCEPT
    assert "dmarc=none header.from=nopolicy.example" in authentication_results(verdict)


def _received_spf(result: str, domain: str, receiver: str = "mx.example.net") -> bytes:
    return (
        f"Received-SPF: {result} (mx: test) client-ip=192.0.2.7; "
        f'envelope-from="bounce@{domain}"; helo=mail.{domain}; receiver={receiver}; '
        "identity=mailfrom\r\n"
    ).encode()


SPF_RECEIVER = "policyd:\n  spf: {receiver: mx.example.net}\n"


def test_dmarc_passes_on_policyds_aligned_spf_pass(make_engine: Make) -> None:
    engine = make_engine(extra=ENFORCE + SPF_RECEIVER)
    raw = _received_spf("pass", "sender.example") + _from("sender.example")
    verdict = run(engine, raw, INBOUND)
    assert verdict.details["dmarc"] == "pass"
    assert verdict.action is Action.ACCEPT


def test_dmarc_ignores_a_received_spf_not_at_the_top(make_engine: Make) -> None:
    # A sender-supplied Received-SPF sits below the first header (policyd's
    # own would be the first one the milter sees).
    engine = make_engine(extra=ENFORCE + SPF_RECEIVER)
    raw = _from("sender.example").replace(
        b"Subject:", _received_spf("pass", "sender.example") + b"Subject:"
    )
    assert run(engine, raw, INBOUND).details["dmarc"] == "fail"
    # ... and one naming another receiver is not ours either
    forged = _received_spf("pass", "sender.example", "mx.evil.example") + _from("sender.example")
    assert run(engine, forged, INBOUND).details["dmarc"] == "fail"


# -- ARC (RFC 8617) ------------------------------------------------------------------


def _forwarded_through_list(tamper_after_seal: bool = False) -> bytes:
    """sender.example signs; the list fwd.example adds a footer (breaking DKIM),
    records what it saw in Authentication-Results and seals the chain."""
    original = _signed_by_sender(_from("sender.example"))
    changed = original + b"-- \r\nlist footer\r\n"
    with_ar = (
        b"Authentication-Results: fwd.example; dkim=pass header.d=sender.example\r\n" + changed
    )
    seal = dkim.arc_sign(with_ar, b"f1", b"fwd.example", _pkcs1(FOREIGN), b"fwd.example")
    sealed = b"".join(seal) + with_ar
    return sealed + b"more\r\n" if tamper_after_seal else sealed


def test_arc_chain_from_a_trusted_forwarder_overrides_dmarc_reject(make_engine: Make) -> None:
    raw = _forwarded_through_list()
    strict = run(make_engine(extra=ENFORCE), raw, INBOUND)
    assert strict.details["arc"] == "pass"
    assert dkim_results(strict) == ["fail"]
    assert strict.action is Action.REJECT
    trusting = make_engine(extra=ENFORCE + "    trusted_arc_sealers: [fwd.example]\n")
    verdict = run(trusting, raw, INBOUND)
    assert verdict.action is Action.ACCEPT
    assert "arc=pass (i=1 d=fwd.example)" in authentication_results(verdict)


def test_broken_arc_chain_fails(make_engine: Make) -> None:
    engine = make_engine(extra=ENFORCE + "    trusted_arc_sealers: [fwd.example]\n")
    verdict = run(engine, _forwarded_through_list(tamper_after_seal=True), INBOUND)
    assert verdict.details["arc"] == "fail"
    assert verdict.action is Action.REJECT


def test_sealed_forward_verifies_as_arc_pass_at_the_next_hop(make_engine: Make) -> None:
    # Given our MX seals what it relays on (to an external mailbox)
    seal = "    arc_seal: true\n    arc_seal_domain: example.org\n    arc_seal_selector: s1\n"
    ours = make_engine(extra=seal)
    inbound = _signed_by_sender(_from("sender.example"))
    # (sealed by the real clock: dkimpy's ARC verifier checks t= with time.time())
    verdict = run(ours, inbound, INBOUND, clock=SystemClock())
    assert verdict.details["arc_sealed"] is True
    forwarded = apply_edits(Message.from_bytes(inbound), verdict).as_bytes()
    names = [h.name for h in Message.from_bytes(forwarded).headers]
    assert names[:4] == [
        "ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results", "Authentication-Results",
    ]  # fmt: skip
    # When the next receiver (trusting us as a sealer) checks it
    receiver = make_engine(
        extra=ENFORCE + "    trusted_arc_sealers: [example.org]\n",
        authserv_id="mx.other.example",
    )
    checked = run(receiver, forwarded, INBOUND)
    assert checked.details["arc"] == "pass"
    assert "arc=pass (i=1 d=example.org)" in authentication_results(checked)


def test_arc_seal_needs_an_rsa_key_of_the_key_table(keydir: Path) -> None:
    text = (
        "milters:\n  dkim:\n    arc_seal: true\n    arc_seal_domain: example.org\n"
        "    arc_seal_selector: nope\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "pw.yaml")
    assert "must name an entry of keys" in str(info.value.problems[0])


@pytest.mark.parametrize(
    ("domain", "action"), [("pct100.example", Action.REJECT), ("pct0.example", Action.QUARANTINE)]
)
def test_dmarc_pct_outside_the_share_gets_the_next_lower_policy(
    make_engine: Make, domain: str, action: Action
) -> None:
    # RFC 7489 6.6.4: p=reject with pct=0 is quarantine for every message
    verdict = run(make_engine(extra=ENFORCE), _from(domain), INBOUND)
    assert verdict.action is action


def test_dmarc_pct_share_is_stable_but_keyed_by_the_installation_secret() -> None:
    keys = [f"<{n}@pct.example>".encode() for n in range(2000)]
    share = [dmarc.sampled(30, k, b"secret one") for k in keys]
    # The same message gets the same answer (Postfix, a retry, scan)...
    assert share == [dmarc.sampled(30, k, b"secret one") for k in keys]
    assert 0.25 < sum(share) / len(share) < 0.35  # ...about pct % are in
    # ...and which ones depends on a secret a sender cannot know, so it
    # cannot pick a Message-ID that lands outside the share
    other = [dmarc.sampled(30, k, b"secret two") for k in keys]
    assert share != other


def test_dmarc_pct_share_is_the_same_for_every_process_on_one_redis(
    make_engine: Make, store: Store
) -> None:
    raws = [_from("pct50.example").replace(b"<1@", f"<{n}@".encode()) for n in range(40)]
    first = [run(make_engine(extra=ENFORCE), r, INBOUND).action for r in raws]
    again = [run(make_engine(extra=ENFORCE), r, INBOUND).action for r in raws]
    assert first == again  # a second engine (another milter, scan) reads the same secret
    assert {Action.REJECT, Action.QUARANTINE} == set(first)
    assert len(list(store.redis.scan_iter(match=store.keys.secret("*")))) == 1


@pytest.mark.expect_log("WARNING", "next-lower policy applied")
def test_dmarc_pct_without_redis_never_exceeds_the_share(make_engine: Make) -> None:
    def no_redis(_settings: Settings) -> Store:
        raise StoreUnavailable("redis unavailable: connection refused")

    # RFC 7489 6.6.4: MUST NOT enact the policy on more than pct %
    engine = make_engine(extra=ENFORCE, store_factory=no_redis)
    verdict = run(engine, _from("pct50.example"), INBOUND)
    assert verdict.action is Action.QUARANTINE
