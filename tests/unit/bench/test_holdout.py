"""bench.holdout keeps only fresh, intact mail of the two later sets."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from bench.accuracy import main
from bench.holdout import extract
from tests.fixtures.corpus import unpack


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def member(folder: str, num: int, raw: bytes, md5: str | None = None) -> tuple[str, bytes]:
    digest = md5 or hashlib.md5(raw).hexdigest()
    return f"package/data/{folder}/{num:05d}.{digest}.txt", raw


def package(tmp: Path, members: list[tuple[str, bytes]]) -> Path:
    tgz = tmp / "pkg.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, data in members:
            add(tar, name, data)
    return tgz


def test_holdout_takes_the_later_sets_and_leaves_out_what_the_shared_corpus_holds(
    tmp_path: Path,
) -> None:
    shared = unpack(tmp_path / "shared")[0].read_bytes()
    head, _, body = shared.partition(b"\n\n")
    spam = b"From: a@example.biz\nSubject: buy\n\ncheap pills\n"
    ham = b"From: b@example.org\nSubject: notes\n\nthe minutes\n"
    tgz = package(
        tmp_path,
        [
            member("spam-2", 1, spam),
            member("easy-ham-2", 1, ham),
            member("spam-1", 1, b"Subject: old\n\nalready in the shared corpus\n"),
            # The same body re-received with another header: still a duplicate.
            member("easy-ham-2", 2, b"Received: from elsewhere\n" + head + b"\n\n" + body),
        ],
    )
    counts = extract(tgz, tmp_path / "out")
    assert counts == {"spam": 1, "ham": 1, "duplicate of the shared corpus": 1}
    [got_spam] = (tmp_path / "out" / "spam").iterdir()
    assert got_spam.read_bytes() == spam and got_spam.name.startswith("spam-2-00001.")
    assert [p.read_bytes() for p in (tmp_path / "out" / "ham").iterdir()] == [ham]


def test_holdout_refuses_a_message_that_does_not_match_its_md5_name(tmp_path: Path) -> None:
    tgz = package(tmp_path, [member("spam-2", 1, b"Subject: x\n\ny\n", md5="0" * 32)])
    with pytest.raises(SystemExit, match="does not match its MD5"):
        extract(tgz, tmp_path / "out")


def test_accuracy_refuses_a_holdout_with_a_tune_mode_that_would_ignore_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--tune-milter", "chi2", "--holdout", str(tmp_path)])
    assert exit_.value.code == 2
    assert "use TRAIN only" in capsys.readouterr().err
