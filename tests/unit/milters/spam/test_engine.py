"""The spam engine: scores, thresholds, actions, headers, lists, profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from milters.message import Action, HeaderOp
from milters.spam.checks.gtube import GTUBE
from tests.unit.milters.spam.engine_setup import added, engine, message, names, scan


def test_clean_message_is_accepted_with_score_and_result_headers() -> None:
    eng, svc = engine()
    v = scan(eng, svc, message())
    assert v.action is Action.ACCEPT
    assert v.score is not None and v.score < 4
    assert added(v, "X-Spam-Score") == [f"{v.score:.2f}"]
    [result] = added(v, "X-Spamd-Result")
    assert result.startswith("default: False [")
    assert "action=accept" in result
    assert added(v, "X-Spam") == [] and added(v, "X-Spam-Flag") == []


def test_gtube_rejects_with_550_5_7_1_naming_the_score() -> None:
    eng, svc = engine()
    v = scan(eng, svc, message(GTUBE.decode() + "\r\n"))
    assert v.action is Action.REJECT
    assert "GTUBE" in names(v)
    assert v.reply is not None and (v.reply.code, v.reply.enhanced) == (550, "5.7.1")
    assert f"{v.score:.2f}" in v.reply.text


def test_symbols_show_score_and_options_like_rspamd() -> None:
    eng, svc = engine()
    v = scan(eng, svc, message(drop=("Message-ID", "Date")))
    [result] = added(v, "X-Spamd-Result")
    assert "MISSING_MID(2.50)" in result
    assert "MISSING_DATE(1.00)" in result


@pytest.mark.parametrize(
    ("thresholds", "action"),
    [
        ({"add_header": 1}, Action.ADD_HEADER),
        ({"rewrite_subject": 1}, Action.REWRITE_SUBJECT),
        ({"quarantine": 1}, Action.QUARANTINE),
        ({"reject": 1}, Action.REJECT),
        ({"discard": 1}, Action.DISCARD),
        ({"add_header": 1, "quarantine": 2, "reject": 100}, Action.QUARANTINE),
    ],
)
def test_strongest_threshold_reached_picks_the_action(
    thresholds: dict[str, float], action: Action
) -> None:
    eng, svc = engine({"thresholds": {"add_header": None, "reject": None, **thresholds}})
    v = scan(eng, svc, message(drop=("Message-ID",)))  # MISSING_MID 2.5
    assert v.action is action


def test_tagged_message_gets_flag_headers_and_subject_prefix() -> None:
    eng, svc = engine({"thresholds": {"add_header": 1, "rewrite_subject": 2, "reject": None}})
    v = scan(eng, svc, message(subject="hello", drop=("Message-ID",)))
    assert v.action is Action.REWRITE_SUBJECT
    assert added(v, "X-Spam") == ["Yes"]
    assert added(v, "X-Spam-Flag") == ["YES"]
    assert added(v, "Subject") == ["[SPAM] hello"]


def test_header_names_are_configurable() -> None:
    eng, svc = engine(
        {"thresholds": {"add_header": 1}, "headers": {"spam": "X-Junk", "score": "X-Junk-Score"}}
    )
    v = scan(eng, svc, message(drop=("Message-ID",)))
    assert added(v, "X-Junk") == ["Yes"]
    assert added(v, "X-Junk-Score")
    assert added(v, "X-Spam") == []


def test_incoming_spam_headers_are_deleted_first_last_copy_first() -> None:
    eng, svc = engine()
    raw = message(headers={"X-Spam-Flag": "NO", "X-Spam-Score": "-100"})
    raw = raw.replace(b"X-Spam-Flag: NO", b"X-Spam-Flag: NO\r\nX-Spam-Flag: NO")
    v = scan(eng, svc, raw)
    deletes = [(e.name, e.index) for e in v.header_edits if e.op is HeaderOp.DELETE]
    assert deletes == [("X-Spam-Flag", 2), ("X-Spam-Flag", 1), ("X-Spam-Score", 1)]


def test_symbol_score_and_description_override_one_by_one() -> None:
    eng, svc = engine({"symbols": {"MISSING_MID": {"score": 7.5}}})
    v = scan(eng, svc, message(drop=("Message-ID",)))
    [sym] = [s for s in v.symbols if s.name == "MISSING_MID"]
    assert sym.score == 7.5
    assert sym.description.startswith("no Message-ID")


def test_regex_rules_match_decoded_subject_and_body() -> None:
    rules = [
        {"symbol": "LOTTERY", "body": True, "match": "you have won", "score": 3},
        {"symbol": "SUBJ_PRIZE", "header": "Subject", "match": "^prize$", "score": 2},
    ]
    eng, svc = engine({"rules": rules})
    body = "WW91IGhhdmUgV09OIHRoZSBsb3R0ZXJ5\r\n"  # base64 "You have WON the lottery"
    raw = message(
        body, subject="=?utf-8?q?prize?=", headers={"Content-Transfer-Encoding": "base64"}
    )
    v = scan(eng, svc, raw)
    assert {"LOTTERY", "SUBJ_PRIZE"} <= names(v)


def test_allow_from_wins_over_block_and_skips_scoring() -> None:
    eng, svc = engine({"allow_from": ["example.org"], "block_from": ["alice@example.org"]})
    v = scan(eng, svc, message(GTUBE.decode()))
    assert names(v) == {"ALLOW_FROM"}
    assert v.action is Action.ACCEPT


def test_block_from_matches_subdomains_and_rejects() -> None:
    eng, svc = engine({"block_from": ["@spam.example"]})
    v = scan(eng, svc, message(), mail_from="x@mx.eu.spam.example")
    assert "BLOCK_FROM" in names(v)
    assert v.action is Action.REJECT


def test_domain_entry_does_not_match_a_lookalike_suffix() -> None:
    eng, svc = engine({"block_from": ["spam.example"]})
    v = scan(eng, svc, message(), mail_from="x@notspam.example")
    assert "BLOCK_FROM" not in names(v)


def test_allow_to_for_every_recipient_skips_scoring() -> None:
    eng, svc = engine({"allow_to": ["example.net"]})
    v = scan(eng, svc, message(GTUBE.decode()), rcpts=["a@example.net", "b@sub.example.net"])
    assert names(v) == {"ALLOW_TO"} and v.action is Action.ACCEPT


def test_mixed_profiles_tag_for_the_strict_and_refuse_only_if_all_refuse() -> None:
    spam = {
        "thresholds": {"add_header": 100, "reject": 100, "greylist": None},
        "profiles": {"radical": {"recipients": ["strict.example"],
                                 "thresholds": {"add_header": 1, "reject": 2}}},
    }  # fmt: skip
    eng, svc = engine(spam)
    raw = message(drop=("Message-ID",))  # 2.5
    both = scan(eng, svc, raw, rcpts=["a@strict.example", "b@lenient.example"])
    assert both.action is Action.ADD_HEADER  # tagged for the strict one, nobody refused
    assert added(both, "X-Spam") == ["Yes"]
    strict_only = scan(eng, svc, raw, rcpts=["a@strict.example", "c@mail.strict.example"])
    assert strict_only.action is Action.REJECT
    assert strict_only.details["profiles"] == {
        "a@strict.example": "radical", "c@mail.strict.example": "radical"}  # fmt: skip


def test_outbound_threshold_applies_to_authenticated_senders() -> None:
    eng, svc = engine({"outbound": {"reject": 2}, "thresholds": {"reject": 100}})
    raw = message(drop=("Message-ID",))
    assert scan(eng, svc, raw, auth="alice").action is Action.REJECT
    assert scan(eng, svc, raw).action is not Action.REJECT


def test_forwarding_recipients_get_the_stricter_threshold(tmp_path: object) -> None:
    eng, svc = engine({"forwarding_addresses": ["fwd@example.net"],
                       "forwarding": {"reject": 2}, "thresholds": {"reject": 100}})  # fmt: skip
    raw = message(drop=("Message-ID",))
    assert scan(eng, svc, raw, rcpts=["fwd@example.net"]).action is Action.REJECT
    assert scan(eng, svc, raw, rcpts=["stay@example.net"]).action is not Action.REJECT


def test_forwarding_map_file_is_read_like_a_postfix_map_source(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "virtual"
    path.write_text("# forwards\nfwd@example.net   someone@gmail.example\n")
    eng, svc = engine({"forwarding_map": str(path), "forwarding": {"reject": 2},
                       "thresholds": {"reject": 100}})  # fmt: skip
    v = scan(eng, svc, message(drop=("Message-ID",)), rcpts=["fwd@example.net"])
    assert v.action is Action.REJECT
    assert v.details["profiles"] == {"fwd@example.net": "forwarding"}


def test_oversize_message_is_truncated_or_skipped_with_a_symbol() -> None:
    big = message("x" * 3000 + "\r\n" + GTUBE.decode() + "\r\n")
    eng, svc = engine({"max_scan_size": "2KB"})
    v = scan(eng, svc, big)
    assert "SCAN_TRUNCATED" in names(v) and "GTUBE" not in names(v)
    eng, svc = engine({"max_scan_size": "2KB", "oversize": "skip"})
    assert names(scan(eng, svc, big)) == {"SCAN_SKIPPED"}


def test_url_checks_find_mismatch_ip_literal_shortener_and_many_domains() -> None:
    links = "".join(f'<a href="http://d{i}.example{i}.com/">x</a>' for i in range(12))
    html = (
        '<html><body><a href="http://evil.example/login">https://www.mybank.example/</a>'
        '<a href="http://192.0.2.1/x">here</a> <a href="https://bit.ly/abc">go</a>'
        + links
        + "</body></html>"
    )
    eng, svc = engine()
    v = scan(eng, svc, message(html, headers={"Content-Type": "text/html; charset=utf-8"}))
    assert {"URL_TEXT_MISMATCH", "URL_IP_LITERAL", "URL_SHORTENER", "URL_MANY_DOMAINS",
            "MIME_HTML_ONLY"} <= names(v)  # fmt: skip


def test_link_through_the_senders_own_tracker_is_no_text_mismatch() -> None:
    # A newsletter from example.com shows the shop and links through its tracker
    html = (
        '<html><body><a href="http://clicks.example.com/c?q=1">www.shop.example</a></body></html>'
    )
    eng, svc = engine()
    ctype = {"Content-Type": "text/html; charset=utf-8"}
    own = message(html, headers={**ctype, "From": "News <news@mail.example.com>"})
    assert "URL_TEXT_MISMATCH" not in names(scan(eng, svc, own))
    # Then the same link from anyone else still is one
    other = message(html, headers={**ctype, "From": "News <news@other.example>"})
    assert "URL_TEXT_MISMATCH" in names(scan(eng, svc, other))


def test_link_text_broken_by_a_space_names_no_host() -> None:
    html = (
        '<html><body><a href="http://www.fair.example.org/">www.fair.example.o rg</a></body></html>'
    )
    eng, svc = engine()
    v = scan(eng, svc, message(html, headers={"Content-Type": "text/html; charset=utf-8"}))
    assert "URL_TEXT_MISMATCH" not in names(v)


def test_header_sanity_dates_caps_and_needless_encoding() -> None:
    eng, svc = engine()
    v = scan(eng, svc, message(subject="=?utf-8?B?RlJFRSBNT05FWSBGT1IgWU9V?=",
                               headers={"Date": "Sat, 01 Jan 2050 00:00:00 +0000"}))  # fmt: skip
    assert {"DATE_IN_FUTURE", "SUBJ_ALL_CAPS", "SUBJ_NEEDLESS_ENCODING"} <= names(v)
    v = scan(eng, svc, message(headers={"Date": "not a date"}))
    assert "INVALID_DATE" in names(v)


def test_from_domain_differing_from_envelope_is_a_symbol() -> None:
    eng, svc = engine()
    v = scan(eng, svc, message(), mail_from="bounce@lists.other.example")
    assert "FROM_NEQ_ENVFROM" in names(v)
    v = scan(eng, svc, message(), mail_from="bounce@mail.example.org")
    assert "FROM_NEQ_ENVFROM" not in names(v)


def test_forwarding_lookup_asks_postfix_virtual_alias_map_with_postmap(tmp_path: Path) -> None:
    # Given a virtual(5) table: one alias leaves the server, one stays local
    table = tmp_path / "virtual"
    table.write_text(
        "fwd@example.net  someone@gmail.example\nlocal@example.net  other@example.net\n"
    )
    eng, svc = engine({"forwarding_lookup": f"texthash:{table}", "local_domains": ["example.net"],
                       "forwarding": {"reject": 2}, "thresholds": {"reject": 100}})  # fmt: skip
    raw = message(drop=("Message-ID",))
    # Then only the external forward gets the forwarding threshold
    assert scan(eng, svc, raw, rcpts=["fwd@example.net"]).action is Action.REJECT
    assert scan(eng, svc, raw, rcpts=["local@example.net"]).action is not Action.REJECT
    assert scan(eng, svc, raw, rcpts=["nobody@example.net"]).action is not Action.REJECT


def test_result_header_stays_ascii_and_short_whatever_the_options() -> None:
    rules = [{"symbol": "LONG_MATCH", "body": True, "match": "caf.+", "score": 1}]
    eng, svc = engine({"rules": rules})
    v = scan(eng, svc, message("café " + "é" * 5000 + "\r\n"))
    [result] = added(v, "X-Spamd-Result")
    assert result.isascii()
    assert all(len(line) < 300 for line in result.split("\r\n"))


@pytest.mark.parametrize(
    ("body", "phrases"),
    [
        ("I won't make it; a wonderful cachet, the Wonderland debtors.\r\n", None),
        ("You have won the lottery! Claim your prize.\r\n", "(cash|prize|winner|lottery"),
        ("We refinance any loan.\r\n", "refinanc"),  # a stem on purpose
    ],
)
def test_sales_phrases_match_whole_words_only(body: str, phrases: str | None) -> None:
    eng, svc = engine()
    sym = {s.name: s for s in scan(eng, svc, message(body)).symbols}
    if phrases is None:
        assert "SPAM_PHRASES" not in sym
    else:
        assert any(o.startswith(phrases) for o in sym["SPAM_PHRASES"].options)
