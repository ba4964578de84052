"""SPF through a real Postfix, the real `postwarden policyd` and a loopback DNS server.

XCLIENT ADDR= gives each session the client address the SPF records talk
about (XCLIENT_README); LOGIN= makes it a SASL-authenticated session, which
the SPF check skips.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.fixtures.dnsserver import DnsServer, Zone
from tests.harness.postfix import PostfixInstance, Xclient
from tests.harness.services import ServiceConfig, ServiceProcess
from tests.harness.sink import SmtpSink

pytestmark = pytest.mark.integration

ZONE: Zone = {
    "pass.example": [("TXT", "v=spf1 ip4:198.51.100.0/24 -all")],
    "fail.example": [("TXT", "v=spf1 ip4:203.0.113.0/24 -all exp=why.fail.example")],
    "why.fail.example": [("TXT", "%{i} may not send mail for %{d}")],
}
CLIENT = "198.51.100.7"


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(ZONE) as server:
        yield server


@pytest.fixture
def postfix(
    dns_server: DnsServer,
    postwarden_config: Callable[..., ServiceConfig],
    postwarden_service: Callable[..., ServiceProcess],
    postfix_factory: Callable[..., PostfixInstance],
) -> PostfixInstance:
    config = postwarden_config(
        checks=("spf",),
        overrides={
            "dns": {"nameservers": [dns_server.nameserver], "timeout": "2s"},
            "policyd": {"spf": {"receiver": "mx.test.invalid", "query_timeout": "1s"}},
        },
    )
    postwarden_service(config, "policyd")
    return postfix_factory(policy_services=[config.socket("policyd")])


def test_spf_fail_sender_is_refused_with_550_5_7_23_at_rcpt(
    postfix: PostfixInstance, sink: SmtpSink
) -> None:
    result = postfix.send(
        "bob@fail.example",
        ["a@example.net", "b@example.net"],
        xclient=Xclient(addr=CLIENT, helo="mail.fail.example"),
    )
    # Every recipient is refused with the domain's own explanation.
    assert result.rcpt_codes() == {"a@example.net": 550, "b@example.net": 550}
    text = result.text("rcpt:a@example.net")
    assert "5.7.23" in text
    assert f"{CLIENT} may not send mail for fail.example" in text
    assert not result.accepted
    assert sink.count == 0


def test_spf_pass_is_delivered_with_one_received_spf_header(
    postfix: PostfixInstance, sink: SmtpSink, dns_server: DnsServer
) -> None:
    result = postfix.send(
        "alice@pass.example",
        ["a@example.net", "b@example.net", "c@example.net"],
        xclient=Xclient(addr=CLIENT, helo="mail.pass.example"),
    )
    assert result.accepted, result.replies
    (message,) = sink.wait_for(1)
    headers = message.headers("Received-SPF")
    # One header for the message, not one per recipient.
    assert len(headers) == 1, headers
    value = " ".join(headers[0].split())
    assert value.startswith("pass (mx.test.invalid: domain of pass.example designates")
    assert f"client-ip={CLIENT};" in value
    assert 'envelope-from="alice@pass.example";' in value
    assert "helo=mail.pass.example;" in value and value.endswith("identity=mailfrom")
    # and the three recipients cost one SPF evaluation
    assert len(dns_server.queries_for("pass.example", "TXT")) == 1


def test_authenticated_client_is_not_checked(
    postfix: PostfixInstance, sink: SmtpSink, dns_server: DnsServer
) -> None:
    result = postfix.send(
        "bob@fail.example",
        ["a@example.net"],
        xclient=Xclient(addr=CLIENT, helo="laptop.invalid", login="bob"),
    )
    assert result.accepted, result.replies
    (message,) = sink.wait_for(1)
    assert message.headers("Received-SPF") == []
    assert dns_server.queries_for("fail.example") == []
