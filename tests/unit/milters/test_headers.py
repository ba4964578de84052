"""The header-checks engine: Postfix cleanup semantics, decoding, YAML rules, bad input."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from milters import headers
from milters.context import MessageContext
from milters.header_actions import Context, Verb, parse_action, reject_reply
from milters.header_lines import LineClass
from milters.message import Action, Envelope, HeaderOp, Message
from milters.pipeline import PipelineResult, StageResult
from milters.regexp_table import MatchRule
from postwarden.budget import BudgetExceeded
from postwarden.cli.scan import result_json
from postwarden.config import load_config_text
from postwarden.config.errors import ConfigProblem

SEED = Path(__file__).resolve().parents[4] / "shared" / "rules" / "header_checks.seed-spammers"
ENV = Envelope(
    client_address=ipaddress.ip_address("192.0.2.10"),
    mail_from="sender@example.org",
    recipients=("rcpt@example.net",),
    queue_id="4ABC123",
)


def ctx() -> MessageContext:
    """A fresh context per message: budgets run from the start of each message."""
    return MessageContext.offline()


def engine(
    tmp_path: Path, table: str = "", body: str = "", **extra: object
) -> tuple[headers.HeadersEngine, list[ConfigProblem]]:
    block: dict[str, object] = dict(extra)
    if table:
        (tmp_path / "header_checks").write_text(table, encoding="utf-8")
        block["header_checks"] = [str(tmp_path / "header_checks")]
    if body:
        (tmp_path / "body_checks").write_text(body, encoding="utf-8")
        block["body_checks"] = [str(tmp_path / "body_checks")]
    settings = load_config_text(yaml.safe_dump({"milters": {"headers": block}}))
    problems: list[ConfigProblem] = []
    built = headers.build_from(settings, problems)
    assert built is not None
    return built, problems


def msg(text: str | bytes) -> Message:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return Message.from_bytes(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


# -- actions as cleanup(8) reads them -----------------------------------------


def test_action_word_is_split_on_ascii_space_only() -> None:
    nbsp = parse_action('REJECT\u00a0\u00a0"Plz stop"', Context.HEADER)
    assert nbsp.verb is Verb.UNKNOWN
    assert "non-breaking space" in nbsp.problem
    assert parse_action("reject\tgo away", Context.HEADER).text == "go away"


def test_reject_text_keeps_its_own_status_code_and_4xx_means_tempfail() -> None:
    assert str(reject_reply("")) == "550 5.7.1 message content rejected"
    assert str(reject_reply("5.7.0 nope")) == "550 5.7.0 nope"
    assert str(reject_reply("4.7.1 later")) == "451 4.7.1 later"
    assert str(reject_reply("550 5.7.1 x")) == "550 5.7.1 550 5.7.1 x"  # as dsn_prepend does


def test_prepend_text_must_be_a_header_in_header_checks() -> None:
    assert parse_action("PREPEND just text", Context.HEADER).problem
    assert not parse_action("PREPEND just text", Context.BODY).problem


# -- the seed file --------------------------------------------------------------


def test_seed_file_problems_name_every_line_postfix_skips_or_ignores(tmp_path: Path) -> None:
    _, problems = engine(tmp_path, header_checks=[str(SEED)])
    by_line = {p.line: p for p in problems}
    assert "no closing '/'" in by_line[5].message
    for line in (1, 2, 3, *range(6, 14)):
        assert "non-breaking space (U+00A0) right after the pattern" in by_line[line].message
    # The other 51 rules load, but their action word is glued to its text by
    # U+00A0, so Postfix logs "unknown command" and delivers.
    for line in (4, *range(14, 64)):
        assert 'after "REJECT"' in by_line[line].message
    assert {p.severity for p in problems} == {"warning"}


def test_seed_file_with_strict_refuses_to_start(tmp_path: Path) -> None:
    _, problems = engine(tmp_path, header_checks=[str(SEED)], strict=True)
    assert problems and {p.severity for p in problems} == {"error"}


@pytest.mark.expect_log("WARNING", "non-breaking space")
def test_seed_rule_matches_but_lets_mail_through_like_postfix(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, header_checks=[str(SEED)])
    v = e.evaluate(msg("From: x@massnews.gr\nTo: y@seminaria.gr\n\nhi\n"), ENV, ctx())
    assert v.action is Action.ACCEPT
    matches = v.details["matches"]
    assert isinstance(matches, list)
    assert matches[0]["rule"].endswith("header_checks.seed-spammers:14")
    assert matches[0]["action"] == "UNKNOWN"


# -- cleanup semantics across lines -----------------------------------------------


def test_first_matching_rule_per_line_wins(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, "/^Subject: a/ WARN first\n/^Subject: ab/ REJECT second\n")
    v = e.evaluate(msg("Subject: abc\n\nx\n"), ENV, ctx())
    assert v.action is Action.ACCEPT
    assert v.details["matches"][0]["text"] == "first"  # type: ignore[index]


def test_reject_stops_inspection_of_later_lines(tmp_path: Path) -> None:
    e, _ = engine(
        tmp_path, "/^Subject: bad/ REJECT 5.7.1 go away\n/^X-Later:/ DISCARD\n", body="/./ HOLD\n"
    )
    v = e.evaluate(msg("Subject: bad\nX-Later: 1\n\nbody\n"), ENV, ctx())
    assert v.action is Action.REJECT
    assert str(v.reply) == "550 5.7.1 go away"
    assert str(v.details["rule"]).endswith("header_checks:1")
    assert len(v.details["matches"]) == 1  # type: ignore[arg-type]


def test_hold_continues_and_a_later_reject_still_wins(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, "/^Subject:/ HOLD check me\n/^X-Bad:/ REJECT no\n")
    assert e.evaluate(msg("Subject: s\n\nx\n"), ENV, ctx()).action is Action.QUARANTINE
    v = e.evaluate(msg("Subject: s\nX-Bad: 1\n\nx\n"), ENV, ctx())
    assert v.action is Action.REJECT
    assert e.needs.quarantine


def test_redirect_stops_inspection_so_a_later_reject_is_not_seen(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, "/^Subject:/ REDIRECT trap@example.com\n/^X-Bad:/ REJECT no\n")
    v = e.evaluate(msg("Subject: s\nX-Bad: 1\n\nx\n"), ENV, ctx())
    assert v.action is Action.ADD_HEADER
    assert v.add_recipients == ("trap@example.com",)
    assert v.remove_recipients == ("rcpt@example.net",)


def test_four_xx_reject_text_tempfails(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, "/^Subject: later/ REJECT 4.7.1 try later\n")
    v = e.evaluate(msg("Subject: later\n\nx\n"), ENV, ctx())
    assert v.action is Action.TEMPFAIL
    assert str(v.reply) == "451 4.7.1 try later"


def test_prepend_ignore_and_replace_become_milter_header_edits(tmp_path: Path) -> None:
    e, _ = engine(
        tmp_path,
        "/^X-Drop:/ IGNORE\n/^X-Tag: (.*)/ PREPEND X-Tagged: $1\n"
        "/^X-Old: (.*)/ REPLACE X-Old: new $1\n/^X-Rename: (.*)/ REPLACE X-Renamed: $1\n",
    )
    m = msg("Subject: s\nX-Drop: 1\nX-Tag: t\nX-Old: o\nX-Rename: r\n\nx\n")
    v = e.evaluate(m, ENV, ctx())
    ops = [(x.op, x.name, x.value, x.index) for x in v.header_edits]
    assert (HeaderOp.DELETE, "X-Drop", "", 1) in ops
    assert (HeaderOp.CHANGE, "X-Old", "new o", 1) in ops
    assert (HeaderOp.DELETE, "X-Rename", "", 1) in ops
    # After the two deletes the list is Subject, X-Tag, X-Old: X-Tagged goes
    # above X-Tag (1), X-Renamed where X-Rename was (3); both + 1 for the
    # Received: header Postfix hides from milters but counts in inserts.
    assert (HeaderOp.INSERT, "X-Tagged", "t", 2) in ops
    assert (HeaderOp.INSERT, "X-Renamed", "r", 4) in ops
    assert e.needs.change_headers


def test_bcc_adds_a_recipient_and_dunno_stops_the_line(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, "/^To:.*vip/ DUNNO\n/^To:/ BCC audit@example.com\n")
    assert e.evaluate(msg("To: vip@x\n\nx\n"), ENV, ctx()).add_recipients == ()
    assert e.evaluate(msg("To: a@x\n\nx\n"), ENV, ctx()).add_recipients == ("audit@example.com",)


@pytest.mark.expect_log("WARNING", "lookup error")
def test_non_utf8_result_defers_like_a_postfix_lookup_error(tmp_path: Path) -> None:
    (tmp_path / "t").write_bytes(b"/^Subject:/ REJECT caf\xe9\n")
    e, _ = engine(tmp_path, header_checks=[str(tmp_path / "t")])
    v = e.evaluate(msg("Subject: s\n\nx\n"), ENV, ctx())
    assert v.action is Action.TEMPFAIL
    assert str(v.reply).startswith("451 4.3.0")


# -- beyond Postfix: decoded matching (intended differences) -----------------------


def test_encoded_subject_matches_in_decoded_form_only(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, "/^Subject:.*free money/ REJECT no\n")
    v = e.evaluate(msg("Subject: =?utf-8?B?ZnJlZSBtb25leQ==?=\n\nx\n"), ENV, ctx())
    assert v.action is Action.REJECT
    assert v.details["form"] == "decoded"
    assert v.details["matched"] == "Subject: free money"
    e2, _ = engine(tmp_path, "/^Subject:.*free money/ REJECT no\n", decoded_matching=False)
    assert e2.evaluate(msg("Subject: =?utf-8?B?ZnJlZSBtb25leQ==?=\n\nx\n"), ENV, ctx()).action is (
        Action.ACCEPT
    )


def test_folded_header_matches_unfolded(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, "/^Subject: free money/ REJECT no\n")
    assert e.evaluate(msg("Subject: free\n money\n\nx\n"), ENV, ctx()).action is Action.REJECT


def test_body_rule_sees_base64_and_html_text(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, body="/big casino/ DISCARD\n")
    b64 = "Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\nYmlnIGNhc2lubyB3aW5z\n"
    v = e.evaluate(msg(f"Subject: s\n{b64}"), ENV, ctx())
    assert v.action is Action.DISCARD
    assert v.details["form"] == "decoded"
    html = "Content-Type: text/html\n\n<p>big <b>casino</b></p>\n"
    assert e.evaluate(msg(f"Subject: s\n{html}"), ENV, ctx()).action is Action.DISCARD


def test_decoded_html_skips_comments_and_scripts_and_survives_unclosed_ones(
    tmp_path: Path,
) -> None:
    e, _ = engine(tmp_path, body="/big casino/ DISCARD\n")
    hidden = "Content-Type: text/html\n\n<p>big<!-- x --> <script>y</script>casino</p>\n"
    assert e.evaluate(msg(f"Subject: s\n{hidden}"), ENV, ctx()).action is Action.DISCARD
    # 200 KB of unclosed comments (quadratic for html.parser on Debian's
    # Python) before the words: the part is read linearly; the unclosed
    # comment hides what follows, as a browser would.
    flood = "Content-Type: text/html\n\n" + "<!--" * 50_000 + "big casino\n"
    assert e.evaluate(msg(f"Subject: s\n{flood}"), ENV, ctx()).action is Action.ACCEPT


def test_raw_body_line_matches_without_decoding(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, body="/^visit casino/ REJECT casino\n")
    v = e.evaluate(msg("Subject: s\n\nvisit casino now\n"), ENV, ctx())
    assert v.action is Action.REJECT
    assert v.details["form"] == "raw"


def test_mime_part_headers_go_to_mime_header_checks(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, '/^Content-Disposition:.*filename="?[^"]*\\.exe/ REJECT exe\n')
    body = (
        'Content-Type: multipart/mixed; boundary="b1"\n\n--b1\nContent-Type: text/plain\n\nhi\n'
        "--b1\nContent-Type: application/octet-stream\nContent-Disposition: attachment;\n"
        ' filename="x.exe"\n\nAAAA\n--b1--\n'
    )
    v = e.evaluate(msg(f"Subject: s\nMIME-Version: 1.0\n{body}"), ENV, ctx())
    assert v.action is Action.REJECT
    assert "mime_header_checks" in str(v.details["where"])


# -- YAML rules -----------------------------------------------------------------


def test_yaml_rule_scoped_to_inbound_skips_authenticated_mail(tmp_path: Path) -> None:
    rule = {"header": "Subject", "match": "invoice", "action": "HOLD", "scope": "inbound"}
    e, _ = engine(tmp_path, rules=[rule])
    assert e.evaluate(msg("Subject: your invoice\n\nx\n"), ENV, ctx()).action is Action.QUARANTINE
    authed = Envelope(**{**{f: getattr(ENV, f) for f in Envelope.__dataclass_fields__},
                         "auth_user": "alice"})  # fmt: skip
    assert e.evaluate(msg("Subject: your invoice\n\nx\n"), authed, ctx()).action is Action.ACCEPT


def test_yaml_rule_in_warn_mode_stamps_a_header_and_does_not_act(tmp_path: Path) -> None:
    rule = {"header": "Subject", "match": "scam", "action": "DISCARD", "mode": "warn"}
    e, _ = engine(tmp_path, rules=[rule])
    v = e.evaluate(msg("Subject: scam alert\n\nx\n"), ENV, ctx())
    assert v.action is Action.ADD_HEADER
    (edit,) = v.header_edits
    assert edit.name == "X-Postwarden-Warn"
    assert "would DISCARD" in edit.value and "rules[0]" in edit.value


def test_yaml_rule_with_sender_pattern_only_applies_to_that_sender(tmp_path: Path) -> None:
    rule = {"header": "*", "match": "^X-Campaign:", "action": "REJECT", "senders": ["@bulk\\."]}
    e, _ = engine(tmp_path, rules=[rule])
    bulk = Envelope(mail_from="a@bulk.example", recipients=("r@x",))
    assert e.evaluate(msg("X-Campaign: 1\n\nx\n"), bulk, ctx()).action is Action.REJECT
    assert e.evaluate(msg("X-Campaign: 1\n\nx\n"), ENV, ctx()).action is Action.ACCEPT


def test_yaml_rule_with_bad_regex_is_a_config_error() -> None:
    with pytest.raises(Exception, match="not a valid RE2 pattern"):
        load_config_text(
            yaml.safe_dump(
                {"milters": {"headers": {"rules": [{"header": "Subject", "match": "(a"}]}}}
            )
        )


# -- bad input: a verdict, never an exception ------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: caf\xe9 \xff\xfe\r\nFrom: \x80\x81\r\n\r\nbody \xff\r\n",
        b"Subject: =?utf-8?B?!!!not-base64?= =?bogus-charset?Q?=ZZ?= =?utf-8?q?\r\n\r\nx\r\n",
        b"Subject: " + b"A" * (1 << 20) + b"\r\n\r\nx\r\n",
        b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)) + b"\r\nx\r\n",
        b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--\r\n\r\n",
        b"\r\n\r\n",
        b"",
    ],
    ids=["8bit", "bad-encoded-words", "1MB-header", "10000-headers", "broken-mime", "empty", "nil"],
)
def test_hostile_messages_get_a_verdict(tmp_path: Path, raw: bytes) -> None:
    e, _ = engine(
        tmp_path,
        "/^Subject:.*caf/ WARN x\n/^X-H9999:/ HOLD last\n/^Subject: A+B/ REJECT no\n",
        body="/x/ WARN body\n",
    )
    v = e.evaluate(Message.from_bytes(raw), ENV, ctx())
    assert v.action in (Action.ACCEPT, Action.ADD_HEADER, Action.QUARANTINE)


@pytest.mark.expect_log("WARNING", "ran out of its")
def test_catastrophic_backtracking_pattern_is_bounded(tmp_path: Path) -> None:
    # A back-reference forces the Python re fallback; (a+)+ on a long run of
    # a's without the final b backtracks for ages. The budget stops it.
    e, _ = engine(
        tmp_path,
        "/^Subject: (a)\\1(a+)+b/ REJECT never\n/^Subject:/ WARN next rule still runs\n",
        fallback_timeout="50ms",
    )
    first = e.tables[LineClass.HEADER][0].rules[0]
    assert isinstance(first, MatchRule) and first.first.compiled.engine == "fallback"
    v = e.evaluate(msg("Subject: " + "a" * 40 + "!\n\nx\n"), ENV, ctx())
    assert v.action is Action.ACCEPT
    assert v.details["matches"][0]["text"] == "next rule still runs"  # type: ignore[index]
    assert e.fallback.timeouts == 1
    e.fallback.close()


def test_a_fallback_match_ends_with_the_message_budget(tmp_path: Path) -> None:
    # fallback_timeout (10s) is far above what the message has left: the
    # match stops at the message's deadline and names the header and table.
    e, _ = engine(tmp_path, "/^Subject: (a)\\1(a+)+b/ REJECT never\n", fallback_timeout="10s")
    with pytest.raises(BudgetExceeded) as caught:
        e.evaluate(
            msg("Subject: " + "a" * 40 + "!\n\nx\n"), ENV, MessageContext.offline(budget=0.3)
        )
    assert caught.value.where.startswith(f"header Subject, {tmp_path / 'header_checks'}: ")
    assert "fallback regex" in caught.value.where
    assert e.fallback.timeouts == 0
    e.fallback.close()


def test_body_and_part_header_edits_rewrite_the_body(tmp_path: Path) -> None:
    e, _ = engine(
        tmp_path,
        "/^Content-Description: secret/ IGNORE\n",
        body="/^tracking pixel/ IGNORE\n/^old footer/ REPLACE new footer\n/^dear/ PREPEND Hi!\n",
    )
    assert e.needs.change_body
    body = (
        'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n'
        "Content-Description: secret plan\n\ndear reader\ntracking pixel here\nold footer\n--b--\n"
    )
    v = e.evaluate(msg(f"Subject: s\n{body}"), ENV, ctx())
    assert v.new_body is not None
    assert v.new_body == (
        b"--b\r\nContent-Type: text/plain\r\n\r\nHi!\r\ndear reader\r\nnew footer\r\n--b--\r\n"
    )


def test_body_edits_are_not_applied_to_a_truncated_body(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, body="/^drop me/ IGNORE\n")
    m = Message.from_bytes(b"Subject: s\r\n\r\ndrop me\r\n" + b"x" * 100, max_body_size=20)
    v = e.evaluate(m, ENV, ctx())
    assert v.new_body is None
    assert "max_body_size" in v.details["matches"][0]["note"]  # type: ignore[index]


def test_body_inspection_stops_at_body_checks_size_limit(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, body="/needle/ REJECT found\n", body_checks_size_limit="1KB")
    early = msg("Subject: s\n\nneedle\n" + "x" * 5000 + "\n")
    late = msg("Subject: s\n\n" + "x" * 5000 + "needle\n")
    assert e.evaluate(early, ENV, ctx()).action is Action.REJECT
    assert e.evaluate(late, ENV, ctx()).action is Action.ACCEPT


def test_filter_is_recorded_and_mapped_to_the_configured_header(tmp_path: Path) -> None:
    e, _ = engine(
        tmp_path, "/^X-Route:/ FILTER smtp:[relay.example]:25\n", filter_header="X-Filter"
    )
    v = e.evaluate(msg("X-Route: 1\n\nx\n"), ENV, ctx())
    assert v.details["filter"] == "smtp:[relay.example]:25"
    assert [(h.name, h.value) for h in v.header_edits] == [("X-Filter", "smtp:[relay.example]:25")]


def test_pass_stops_inspection_and_strip_deletes_the_header(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, "/^X-Strip:/ STRIP gone\n/^X-Trusted:/ PASS\n/^Subject:/ REJECT\n")
    v = e.evaluate(msg("X-Strip: 1\nX-Trusted: yes\nSubject: s\n\nx\n"), ENV, ctx())
    assert v.action is Action.ADD_HEADER
    assert [(x.op, x.name) for x in v.header_edits] == [(HeaderOp.DELETE, "X-Strip")]


def test_raw_match_in_a_later_table_beats_decoded_match_in_an_earlier_one(tmp_path: Path) -> None:
    (tmp_path / "first").write_text("/^Subject: free money/ REJECT decoded hit\n")
    (tmp_path / "second").write_text("/^Subject: =\\?utf-8\\?/ WARN raw hit\n")
    tables = [str(tmp_path / "first"), str(tmp_path / "second")]
    e, _ = engine(tmp_path, header_checks=tables)
    v = e.evaluate(msg("Subject: =?utf-8?B?ZnJlZSBtb25leQ==?=\n\nx\n"), ENV, ctx())
    assert v.action is Action.ACCEPT  # as Postfix: the raw WARN in the second table
    assert v.details["matches"][0]["text"] == "raw hit"  # type: ignore[index]


def test_scan_json_keeps_the_verdict_action_and_shows_rule_form_and_reply(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, "/^Subject:.*free money/ REJECT 5.7.1 no\n")
    v = e.evaluate(msg("Subject: =?utf-8?B?ZnJlZSBtb25leQ==?=\n\nx\n"), ENV, ctx())
    result = PipelineResult("m.eml", v.action, [StageResult("headers", v, v)])
    out = result_json(result)["milters"]["headers"]
    assert out["action"] == "reject"
    assert out["rule_action"] == "REJECT"
    assert out["rule"].endswith("header_checks:1")
    assert out["form"] == "decoded"
    assert out["reply"] == "550 5.7.1 no"
