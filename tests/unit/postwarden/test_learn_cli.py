"""`postwarden learn` and `postwarden stat` on files, Maildirs, mbox, stdin and bad input."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from postwarden.bayes.sources import Found, Skipped, iter_maildir
from postwarden.cli import main
from postwarden.store.client import Store
from postwarden.store.embedded import EmbeddedRedis


def msg(n: int, kind: str = "spam") -> bytes:
    return (
        f"From: a{n}@example.org\nSubject: {kind} number {n}\nMessage-ID: <{kind}{n}@x>\n\n"
        f"{kind} words here {n}\n"
    ).encode()


def config(tmp_path: Path, redis_server: EmbeddedRedis, extra: str = "") -> str:
    path = tmp_path / "pw.yaml"
    path.write_text(
        f'redis: {{url: "unix://{redis_server.socket}", prefix: "pwtest:"}}\n'
        f"milters:\n  spam:\n    bayes: {{min_learns: 2{extra}}}\n"
    )
    return str(path)


def learn(cfg: str, *args: str, stdin: bytes | None = None) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(main, ["learn", *args[:1], "-c", cfg, "--json", *args[1:]],
                                input=stdin)  # fmt: skip
    assert result.stdout.strip(), result.output
    return result.exit_code, json.loads(result.stdout)


def maildir(root: Path, *messages: bytes) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for n, raw in enumerate(messages):
        (root / ("new" if n % 2 else "cur") / f"17000{n}.M{n}.host:2,S").write_bytes(raw)
    return root


def test_learn_a_maildir_then_again_then_as_the_other_class(
    tmp_path: Path, store: Store, redis_server: EmbeddedRedis
) -> None:
    cfg = config(tmp_path, redis_server)
    box = maildir(tmp_path / "Junk", msg(1), msg(2), msg(3))
    code, s = learn(cfg, "spam", str(box))
    assert code == 0 and s["learned"] == 3 and s["skipped"] == []
    code, s = learn(cfg, "spam", str(box))
    assert code == 0 and (s["learned"], s["already_known"]) == (0, 3)
    code, s = learn(cfg, "ham", str(box / "cur" / os.listdir(box / "cur")[0]))
    assert code == 0 and s["relearned"] == 1
    code, s = learn(cfg, "forget", str(box))  # forgets whichever class it was
    assert code == 0 and (s["forgotten"], s["not_learned_before"]) == (3, 0)
    code, s = learn(cfg, "forget", str(box))
    assert code == 0 and (s["forgotten"], s["not_learned_before"]) == (0, 3)


def test_learn_an_mbox_and_stdin(tmp_path: Path, store: Store, redis_server: EmbeddedRedis) -> None:
    cfg = config(tmp_path, redis_server)
    mbox = tmp_path / "spam.mbox"
    mbox.write_bytes(
        b"From a@example.org Mon Jan  1 00:00:00 2024\n" + msg(1)
        + b"\nFrom this line is not a separator, it is body text\n"
        + b"\nFrom b@example.org Tue Jan  2 00:00:00 2024\n" + msg(2)
        + b"\n>From quoted line\n"
    )  # fmt: skip
    code, s = learn(cfg, "spam", str(mbox))
    assert code == 0 and s["learned"] == 2
    code, s = learn(cfg, "ham", "-", stdin=msg(7, "ham"))
    assert code == 0 and s["learned"] == 1


def test_bad_input_is_skipped_with_reasons_and_the_rest_learned(
    tmp_path: Path, store: Store, redis_server: EmbeddedRedis
) -> None:
    cfg = config(tmp_path, redis_server)
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "01-good.eml").write_bytes(msg(1))
    (d / "02-random.bin").write_bytes(os.urandom(4096))
    (d / "03-png.eml").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    (d / "04-huge-line.eml").write_bytes(b"Subject: big\n\n" + b"A" * (10 * 1024 * 1024))
    (d / "05-empty.eml").write_bytes(b"")
    (d / "06-attachment.eml").write_bytes(
        b"Subject: with a binary attachment\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\n'
        b"see the file\n--b\nContent-Type: application/octet-stream\n"
        b"Content-Transfer-Encoding: base64\n\nAAECAwQFBgcICQ==\n--b--\n"
    )
    os.mkfifo(d / "07-fifo")
    (d / "08-good.eml").write_bytes(msg(8))
    code, s = learn(cfg, "spam", str(d), str(tmp_path / "missing.eml"))
    assert code == 65, s
    assert s["learned"] == 3  # 01, 06 (its attachment is just a part) and 08
    reasons = {Path(p["path"]).name: p["reason"] for p in s["skipped"]}  # type: ignore[attr-defined]
    assert reasons == {
        "02-random.bin": "not a mail message (no header block)",
        "03-png.eml": "not a mail message (no header block)",
        "04-huge-line.eml": "a line of 10485760 bytes (RFC 5322 allows 998)",
        "05-empty.eml": "empty",
        "07-fifo": "not a regular file",
        "missing.eml": "no such file or directory",
    }


def test_an_unreadable_file_among_many_is_skipped(
    tmp_path: Path, store: Store, redis_server: EmbeddedRedis
) -> None:
    cfg = config(tmp_path, redis_server)
    d = tmp_path / "box"
    d.mkdir()
    for n in range(3):
        (d / f"{n}.eml").write_bytes(msg(n))
    if os.geteuid() == 0:
        # Root reads any file whatever its mode; a read error from the
        # kernel stands in for it (/proc/self/mem fails at offset 0 with EIO).
        (d / "1.eml").unlink()
        os.symlink("/proc/self/mem", d / "1.eml")
        reason = "unreadable: Input/output error"
    else:
        os.chmod(d / "1.eml", 0)
        reason = "unreadable: Permission denied"
    code, s = learn(cfg, "spam", str(d))
    assert code == 65
    assert s["learned"] == 2
    assert s["skipped"] == [{"path": str(d / "1.eml"), "reason": reason}]


def test_a_maildir_file_vanishing_mid_run_is_skipped_or_found_in_cur(tmp_path: Path) -> None:
    box = maildir(tmp_path / "INBOX", *(msg(n) for n in range(6)))
    new = sorted(os.listdir(box / "new"))
    assert len(new) == 3
    items: Iterator[object] = iter_maildir(box)
    first = next(items)
    assert isinstance(first, Found) and first.origin.endswith(new[0])
    # While we read: one new/ file is deleted, another moved to cur/ by an IMAP client.
    os.unlink(box / "new" / new[1])
    moved = new[2].split(":")[0] + ":2,RS"
    os.rename(box / "new" / new[2], box / "cur" / moved)
    rest = list(items)
    skipped = [i for i in rest if isinstance(i, Skipped)]
    found = [Path(i.origin).name for i in rest if isinstance(i, Found)]
    assert [Path(s.origin).name for s in skipped] == [new[1]]
    assert "vanished" in skipped[0].reason
    assert len(found) == 4 and found.count(moved) == 1  # read once, from cur/


def test_stat_shows_learned_counts_and_whether_bayes_is_active(
    tmp_path: Path, store: Store, redis_server: EmbeddedRedis
) -> None:
    cfg = config(tmp_path, redis_server)
    learn(cfg, "spam", "-", stdin=msg(1))
    out = CliRunner().invoke(main, ["stat", "-c", cfg])
    assert "bayes (global): learned 1 spam, 0 ham" in out.output
    assert "inactive: learning 1/2 spam, 0/2 ham; autolearn off" in out.output
    for n in (2, 3, 4):
        learn(cfg, "ham" if n > 2 else "spam", "-", stdin=msg(n, "ham" if n > 2 else "spam"))
    out = CliRunner().invoke(main, ["stat", "-c", cfg, "--json"])
    data = json.loads(out.output)
    got = (data["bayes_learned_spam"], data["bayes_learned_ham"], data["bayes_active"])
    assert got == (2, 2, 1)


def test_learn_fits_the_svm_model_and_upkeep_and_stat_follow_it(
    tmp_path: Path, store: Store, redis_server: EmbeddedRedis
) -> None:
    cfg = config(tmp_path, redis_server, ", method: svm")
    for kind in ("spam", "ham"):
        folder = tmp_path / kind
        folder.mkdir()
        for n in range(3):
            (folder / f"{n}.eml").write_bytes(msg(n, kind))
    # Spam alone is too few to fit from; with the ham there is no model yet,
    # so the first run that can fit does.
    assert learn(cfg, "spam", str(tmp_path / "spam"))[1]["model"] == "too few"
    assert learn(cfg, "ham", str(tmp_path / "ham"))[1]["model"] == "fitted"
    out = CliRunner().invoke(main, ["stat", "-c", cfg])
    assert "svm model fitted" in out.output and "from 6 messages" in out.output

    # One more message (a Junk move) waits for refit_interval...
    assert learn(cfg, "spam", "-", stdin=msg(9))[1]["model"] == "not due"
    data = json.loads(CliRunner().invoke(main, ["stat", "-c", cfg, "--json"]).output)
    assert (data["bayes_model_messages"], data["bayes_model_stale"]) == (6, 1)
    assert "learned more since" in CliRunner().invoke(main, ["stat", "-c", cfg]).output
    # ...or for upkeep, which refits whatever changed.
    up = CliRunner().invoke(main, ["learn", "upkeep", "-c", cfg])
    assert up.exit_code == 0 and "model refitted from 7 messages" in up.output
    up = CliRunner().invoke(main, ["learn", "upkeep", "-c", cfg])
    assert "model current" in up.output

    # With chi2 (the default) nothing is fitted.
    chi2 = config(tmp_path, redis_server)
    assert learn(chi2, "ham", "-", stdin=msg(9, "ham"))[1]["model"] is None
    # Its upkeep drops what svm kept (the ham just learned included: the
    # statistics were still marked as the svm's).
    up = CliRunner().invoke(main, ["learn", "upkeep", "-c", chi2])
    assert up.exit_code == 0
    assert "method is chi2: dropped the svm models and 8 kept token lists" in up.output
    svm = config(tmp_path, redis_server, ", method: svm")  # the same file, svm again
    shown = CliRunner().invoke(main, ["stat", "-c", svm]).output
    assert "svm model not fitted yet" in shown


def test_upkeep_refits_every_per_user_model_the_pipe_left_stale(
    tmp_path: Path, store: Store, redis_server: EmbeddedRedis
) -> None:
    from postwarden.bayes.store import BayesStore, scope_for
    from postwarden.config.sections.bayes import BayesSettings, CombineMethod

    cfg = config(tmp_path, redis_server, ", method: svm, per_user: true")
    # Given two users who trained through the Dovecot pipe (--no-refit)
    for user in ("alice", "bob"):
        for n in range(3):
            for kind in ("spam", "ham"):
                code, out = learn(cfg, kind, "--user", user, "--no-refit", "-",
                                  stdin=msg(n, kind))  # fmt: skip
                assert code == 0 and out["model"] == "left to upkeep"
    # When the hourly upkeep runs without --user
    up = CliRunner().invoke(main, ["learn", "upkeep", "-c", cfg])
    assert up.exit_code == 0, up.output
    # Then each user's model is fitted from that user's six messages
    settings = BayesSettings(min_learns=2, method=CombineMethod.SVM, per_user=True)
    bs = BayesStore(store, settings)
    scopes = {scope_for(settings, u) for u in ("alice", "bob")}
    assert set(bs.scopes()) == scopes
    for scope in scopes:
        info = bs.model_info(scope)
        assert info is not None and info.messages == 6
        assert f"{scope}: " in up.output
    assert up.output.count("model refitted from 6 messages") == 2
    # And --user looks after that user alone
    one = CliRunner().invoke(main, ["learn", "upkeep", "-c", cfg, "--user", "alice"])
    assert one.exit_code == 0 and one.output.count("model current") == 1


def test_stat_counts_per_user_statistics_active_and_stale(
    tmp_path: Path, store: Store, redis_server: EmbeddedRedis
) -> None:
    cfg = config(tmp_path, redis_server, ", method: svm, per_user: true")
    # Given alice trained enough and was fitted, bob only two spam
    for n in range(2):
        for kind in ("spam", "ham"):
            learn(cfg, kind, "--user", "alice", "-", stdin=msg(n, kind))
    learn(cfg, "spam", "--user", "bob", "-", stdin=msg(1))
    learn(cfg, "spam", "--user", "bob", "-", stdin=msg(2))
    # When alice learns one more without a refit
    learn(cfg, "spam", "--user", "alice", "--no-refit", "-", stdin=msg(7))
    # Then stat counts two users, one active, one model, lagging
    out = CliRunner().invoke(main, ["stat", "-c", cfg])
    assert (
        "bayes per user: 2 users learned, 1 active (2 spam and 2 ham each), the others "
        "judged by the global set; svm models for 1, 1 learned more since"
    ) in out.output
    data = json.loads(CliRunner().invoke(main, ["stat", "-c", cfg, "--json"]).output)
    got = {k: v for k, v in data.items() if k.startswith("bayes_users_")}
    assert got == {"bayes_users_learned": 2, "bayes_users_active": 1,
                   "bayes_users_models": 1, "bayes_users_models_stale": 1}  # fmt: skip
    # Without per_user there is no such line
    plain = config(tmp_path, redis_server)
    assert "per user" not in CliRunner().invoke(main, ["stat", "-c", plain]).output


def test_learn_takes_the_milters_subject_tag_off_before_learning(
    tmp_path: Path, store: Store, redis_server: EmbeddedRedis
) -> None:
    from postwarden.bayes.store import GLOBAL_SCOPE
    from postwarden.bayes.tokens import token_id

    cfg = config(tmp_path, redis_server)
    # Given a message the milter tagged (rewrite_subject) and the user moved to Junk
    tagged = msg(1).replace(b"Subject: spam number 1", b"Subject: [SPAM] cheap pills")
    assert learn(cfg, "spam", "-", stdin=tagged)[1]["learned"] == 1

    def learned(token: str) -> bool:
        return bool(store.redis.exists(store.keys.bayes_token(GLOBAL_SCOPE, token_id(token))))

    # Then its words are learned, the tag is not
    assert learned("s:cheap") and learned("s:pills") and not learned("s:spam")
    # A tag later in the Subject is the sender's text, and a tag alone was no Subject
    later = msg(2).replace(b"Subject: spam number 2", b"Subject: Re: [SPAM] filter")
    alone = msg(3).replace(b"Subject: spam number 3", b"Subject: [SPAM]")
    learn(cfg, "spam", "-", stdin=later)
    learn(cfg, "spam", "-", stdin=alone)
    assert learned("s:spam") and learned("s:filter")
    assert store.redis.hget(store.keys.bayes_token(GLOBAL_SCOPE, token_id("s:spam")), "s") == b"1"


def test_learning_stands_when_redis_goes_away_before_the_refit(
    tmp_path: Path, store: Store, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from postwarden.errors import StoreUnavailable

    def away(*_a: object, **_k: object) -> None:
        raise StoreUnavailable("redis unavailable: connection refused")

    monkeypatch.setattr("postwarden.cli.learn.refit", away)
    cfg = config(tmp_path, redis_server, ", method: svm")
    code, out = learn(cfg, "spam", "-", stdin=msg(1))
    # The message is learned (exit 0); only the model waits for the next learn.
    assert (code, out["learned"], out["model"]) == (0, 1, "unavailable")
