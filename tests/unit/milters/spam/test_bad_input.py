"""Bad input always gets a verdict: never an exception, never a hang."""

from __future__ import annotations

from pathlib import Path

import pytest

from milters.message import Action
from postwarden.store.client import Store
from tests.fixtures import corpus
from tests.unit.milters.spam.engine_setup import engine, message, names, scan

HTML = b"Content-Type: text/html\r\nSubject: h\r\n\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"just a body line, no headers\r\n", id="no-headers"),
        pytest.param(b"Subject: x\r\n", id="no-body"),
        pytest.param(b"Subject: " + b"A" * 1_000_000 + b"\r\n\r\nbody\r\n", id="1MB-header-line"),
        pytest.param(
            b"Subject: caf\xe9 \xff\xfe\r\nFrom: \x80@\x81\r\n\r\n\xff\xfe\x00body\r\n",
            id="non-utf8",
        ),
        pytest.param(b"Subject: lf\nFrom: a@b.example\n\nbare LF body\n", id="bare-lf"),
        pytest.param(
            b'Content-Type: multipart/mixed; boundary="zz"\r\nMIME-Version: 1.0\r\n\r\n'
            b"--zz\r\nContent-Type: text/html; charset=no-such-charset\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n--zz",
            id="broken-mime",
        ),
        pytest.param(
            b"Content-Type: multipart/mixed\r\n\r\nno boundary at all\r\n",
            id="multipart-no-boundary",
        ),
        pytest.param(
            b"Subject: x" + b" " * 500_000 + b"1\r\n\r\n" + b"1" * 200_000, id="spaces-and-digits"
        ),
        # HTML built to make a backtracking parser quadratic: a verdict, quickly
        *(
            pytest.param(HTML + piece * (400_000 // len(piece)), id=f"html-{name}")
            for name, piece in [
                ("unclosed-anchors", b'<a href="http://x.example/">'),
                ("lone-brackets", b"<"),
                ("unclosed-comments", b"<!--"),
                ("unclosed-scripts", b"<script>"),
                ("comments-no-script", b"<!-- c -->text "),
            ]
        ),
    ],
)
def test_bad_input_gets_a_verdict(raw: bytes) -> None:
    eng, svc = engine()
    v = scan(eng, svc, raw)
    assert v.action in set(Action)
    assert "CHECK_ERROR" not in names(v)
    assert v.score is not None


def test_ten_thousand_urls_are_scanned_with_a_bounded_list() -> None:
    body = "".join(f"http://host{i}.example{i % 500}.com/p\r\n" for i in range(10_000))
    eng, svc = engine()
    v = scan(eng, svc, message(body))
    assert "URL_MANY_DOMAINS" in names(v)
    assert "CHECK_ERROR" not in names(v)


def test_every_corpus_message_gets_a_verdict_without_errors(tmp_path: Path, store: Store) -> None:
    # Given the 3,250 messages of the shared corpus, unpacked for this test,
    # and a live Redis, so every check runs its whole path (with Redis away
    # each message would only measure redis-py's reconnect back-off)
    files = corpus.unpack(tmp_path)
    assert len(files) == 3250
    eng, svc = engine(store=store)
    actions: dict[str, int] = {}
    for f in files:
        v = scan(eng, svc, f.read_bytes(), ip=None)
        assert "CHECK_ERROR" not in names(v), f
        assert "BAYES_INACTIVE" in names(v), f  # Bayes asked Redis: nothing learned yet
        actions[v.action.value] = actions.get(v.action.value, 0) + 1
    assert sum(actions.values()) == 3250
