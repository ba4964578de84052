"""Generated patterns, checked against the engines Postfix itself uses.

* regexp: glibc's regcomp()/regexec() through ctypes, in the C locale as
  Postfix runs them (byte semantics), with Postfix's flags (REG_EXTENDED,
  REG_ICASE by default, REG_NEWLINE for `m`). Our RE2 translation must give
  the same compile verdict and the same match on every subject.
* pcre: `postmap -q - pcre:FILE` (Postfix's PCRE2), one table per pattern.

Known, deliberate gap: a `$` in the *middle* of a POSIX pattern (glibc lets
it match before some newlines, depending on what follows); such patterns are
left out here and approximated as "before any newline".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import locale
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from milters.header_regex import PatternError, PcreFlags, compile_pcre, compile_posix
from milters.header_regex_worker import FallbackWorker

REG_EXTENDED, REG_ICASE, REG_NEWLINE, REG_NOSUB = 1, 2, 4, 8

POSIX_ATOMS = [b"a", b"B", b".", b"[ab]", b"[^a]", b"[[:alpha:]]", b"[a-c]", b"\\.", b"\\w",
               b"\\s", b"\\W", b"x", b"(a|b)", b"(ab)", b"^", b"[]a]", b"[a-]", b"\\b", b"\\B",
               b"[[:space:]]", b"\xc3\xbc", b"\\(", b"{", b"}", b"|", b"()", b"\\A", b"[Z-a]",
               b"[.]", b"\\-", b"\\d", b"[A-z]"]  # fmt: skip
QUANTS = [b"", b"", b"*", b"+", b"?", b"{2}", b"{1,2}", b"{,2}", b"+*"]
SUBJECTS = [b"", b"a", b"A", b"ab", b"AB", b"b", b"aab", b"x.y", b"a b", b"\n", b"a\nb", b"abc",
            b"\xc3\xbc", b"\xc3\x9c", b"(", b"{", b"}", b"|", b"]", b"-", b"_", b"Zza", b"[",
            b"ba", b"xa", b" a ", b"d", b"1"]  # fmt: skip


class _Regex(ctypes.Structure):
    _fields_ = [("opaque", ctypes.c_char * 256)]  # larger than glibc's regex_t


@pytest.fixture(scope="module")
def glibc() -> Iterator[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    if name is None or "libc.so" not in name:
        pytest.fail("glibc's regcomp/regexec are the oracle for regexp: tables; libc not found")
    libc = ctypes.CDLL(name)
    saved = locale.setlocale(locale.LC_ALL)
    locale.setlocale(locale.LC_ALL, "C")  # Postfix matches bytes in the C locale
    yield libc
    locale.setlocale(locale.LC_ALL, saved)


def _glibc_matches(libc: ctypes.CDLL, pattern: bytes, flags: int) -> list[bool] | None:
    rx = _Regex()
    if libc.regcomp(ctypes.byref(rx), pattern, flags | REG_NOSUB) != 0:
        return None
    try:
        return [libc.regexec(ctypes.byref(rx), s, 0, None, 0) == 0 for s in SUBJECTS]
    finally:
        libc.regfree(ctypes.byref(rx))


def _patterns(seed: int, count: int, atoms: list[bytes]) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        parts = [rng.choice(atoms) + rng.choice(QUANTS) for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.3:
            parts.append(b"$")
        out.append(b"".join(parts))
    return out


@pytest.mark.parametrize(
    ("icase", "newline"), [(True, False), (False, False), (True, True)], ids=["i", "case", "m"]
)
def test_posix_translation_agrees_with_glibc(
    glibc: ctypes.CDLL, icase: bool, newline: bool
) -> None:
    flags = REG_EXTENDED | (REG_ICASE if icase else 0) | (REG_NEWLINE if newline else 0)
    differences = []
    for pattern in _patterns(11, 1500, POSIX_ATOMS):
        if not newline and (b"$" in pattern.rstrip(b"$")[:-1] or b"^$" in pattern):
            continue  # the documented mid-pattern anchor gap
        expected = _glibc_matches(glibc, pattern, flags)
        try:
            compiled, _ = compile_posix(pattern, icase=icase, newline=newline)
        except PatternError:
            got = None
        else:
            if compiled.engine != "re2":
                continue
            got = [compiled.search(s) is not None for s in SUBJECTS]
        if got != expected:
            differences.append(pattern)
    assert differences == []


BRE_ATOMS = [b"a", b"B", b".", b"[ab]", b"\\(a\\)", b"\\(a\\|b\\)", b"(", b")", b"{", b"+", b"?",
             b"|", b"^", b"*", b"\\{", b"\\}", b"x", b"\\w", b"\\."]  # fmt: skip
BRE_QUANTS = [b"", b"", b"*", b"\\{2\\}", b"\\{1,2\\}", b"\\+", b"\\?"]


@pytest.mark.parametrize("icase", [True, False], ids=["i", "case"])
def test_basic_syntax_with_x_toggled_off_agrees_with_glibc(glibc: ctypes.CDLL, icase: bool) -> None:
    rng = random.Random(4)
    differences = []
    for _ in range(1500):
        parts = [rng.choice(BRE_ATOMS) + rng.choice(BRE_QUANTS) for _ in range(rng.randint(1, 3))]
        pattern = b"".join(parts)
        expected = _glibc_matches(glibc, pattern, REG_ICASE if icase else 0)
        try:
            compiled, _ = compile_posix(pattern, icase=icase, extended=False)
        except PatternError:
            got = None
        else:
            if compiled.engine != "re2":
                continue
            got = [compiled.search(s) is not None for s in SUBJECTS]
        if got != expected:
            differences.append(pattern)
    assert differences == []


PCRE_ATOMS = [b"a", b"B", b".", b"[ab]", b"[^a]", b"[[:alpha:]]", b"\\d", b"\\s", b"\\w",
              b"\\b", b"(a|b)", b"(?:ab)", b"^", b"$", b"\\h", b"\\.", b"\xc3\xbc", b"(?i)b",
              b"(?-i)a", b"[\\]a]", b"\\Qa.\\E", b"x", b"(?=a)", b"(?!b)", b"\\Z", b"\\z", b"\\A",
              b"[\\d-]", b"\\x41", b"\\101", b"\\e", b"\\N", b"\\R", b"\\v", b"(a)\\1", b"{",
              b"a|"]  # fmt: skip
PCRE_SUBJECTS = [s for s in SUBJECTS if s and b"\n" not in s and not s.startswith(b" ")]


def test_pcre_patterns_agree_with_postmap(tmp_path: Path) -> None:
    worker = FallbackWorker(budget=5.0)
    rng = random.Random(3)
    differences = []
    try:
        for n, pattern in enumerate(_patterns(5, 120, PCRE_ATOMS)):
            flag_text = rng.choice(["", "i", "m", "s", "x"])
            table = tmp_path / f"t{n}"
            table.write_bytes(b"/" + pattern.replace(b"/", b"\\/") + b"/" + flag_text.encode()
                              + b" HIT\n")  # fmt: skip
            proc = subprocess.run(
                ["postmap", "-q", "-", f"pcre:{table}"],
                input=b"\n".join(PCRE_SUBJECTS) + b"\n",
                capture_output=True,
                timeout=30,
                check=False,
            )
            if b"warning: pcre map" in proc.stderr:  # the rule did not load
                expected = None
            else:
                hits = {line.split(b"\t")[0] for line in proc.stdout.splitlines()}
                expected = [s in hits for s in PCRE_SUBJECTS]
            flags = PcreFlags()
            for f in flag_text:
                name = {"i": "icase", "m": "multiline", "s": "dotall", "x": "extended"}[f]
                setattr(flags, name, not getattr(flags, name))
            try:
                compiled = compile_pcre(pattern, flags, fallback=worker)
                got = [compiled.search(s) is not None for s in PCRE_SUBJECTS]
            except PatternError:
                got = None
            if got != expected:
                differences.append((pattern, flag_text))
    finally:
        worker.close()
    assert differences == []
