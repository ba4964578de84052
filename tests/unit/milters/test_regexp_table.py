"""Table syntax as Postfix reads it: lines, flags, if/endif, substitutions, engines."""

from __future__ import annotations

import pytest

from milters.header_regex import PatternError, PcreFlags, compile_pcre, compile_posix
from milters.regexp_table import Dialect, Table, parse_table


def table(text: str | bytes, dialect: Dialect = Dialect.REGEXP) -> Table:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return parse_table(data, "t", dialect)


def result(t: Table, key: str) -> str | None:
    hit = t.lookup(key.encode("utf-8"))
    return None if hit is None else hit.result


def test_continuation_lines_join_without_the_newline_and_skip_comments() -> None:
    t = table("/^ab/\n  REJECT  multi\n# comment\n\n\tline  \n/^c/ C\n")
    assert result(t, "abc") == "REJECT  multi\tline"
    assert t.rules[0].loc.line == 1
    assert result(t, "c") == "C"


def test_indented_first_line_is_reported_and_skipped() -> None:
    t = table("  /^b/ B\n/^a/ A\n")
    assert result(t, "b") is None
    assert t.problems[0].line == 1 and "whitespace" in t.problems[0].message


def test_flags_toggle_defaults_so_i_means_case_sensitive() -> None:
    t = table("/^akis/i A\n/^other/ O\n")
    assert result(t, "AKIS") is None
    assert result(t, "akis") == "A"
    assert result(t, "OTHER") == "O"


def test_nbsp_after_closing_delimiter_skips_the_rule_with_a_plain_reason() -> None:
    t = table("/massnews\\.gr/\u00a0 REJECT x\n/ok/ OK\n")
    assert result(t, "massnews.gr") is None
    (problem,) = t.problems
    assert problem.line == 1 and "non-breaking space (U+00A0)" in problem.message


def test_if_endif_nesting_and_negation() -> None:
    t = table("if /^From:/\nif !/trusted/\n/x/ X\nendif\nendif\n/x/ OUTSIDE\n")
    assert result(t, "From: x") == "X"
    assert result(t, "From: x trusted") == "OUTSIDE"
    assert result(t, "To: x") == "OUTSIDE"


def test_if_without_endif_ends_the_table_when_false() -> None:
    t = table("if /^From:/\n/x/ X\n/y/ Y\n")
    assert result(t, "To: y") is None
    assert "no matching endif" in t.problems[0].message


def test_substitutions_and_the_rules_postfix_refuses() -> None:
    t = table("/^(c)(d)?(x)?/ [$1][${2}][$(1)][$$][$3]\n/^(e)/ $1y\n/^f/ $1\n!/^(g)/ $1\n/^h/ 1$\n")
    assert result(t, "cx") == "[c][][c][$][x]"
    assert {p.line for p in t.problems} == {2, 3, 4, 5}


def test_pcre_has_no_legacy_second_pattern_so_bang_is_an_unknown_flag() -> None:
    text = "/^i/!/j/ INOTJ\n"
    assert result(table(text), "ix") == "INOTJ"
    pcre = table(text, Dialect.PCRE)
    assert result(pcre, "ix") is None
    assert "unknown flag" in pcre.problems[0].message


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        (b"^a..b$", "aüb".encode(), True),  # bytes: ü is two dots
        (b"\xc3\xbc", "Ü".encode(), False),  # only ASCII folds
        (b"^f[\\.]$", b"f\\", True),  # backslash is literal in brackets
        (b"^z+*$", b"zz", True),  # stacked repetition is legal POSIX
        (b"^a{,3}$", b"aaa", True),
        (b"^\\d$", b"d", False),  # glibc + REG_ICASE: never matches
        (b"^[[:digit:]]+$", b"123", True),
        (b"^x.y$", b"x\ny", True),  # no REG_NEWLINE: . matches newline
        (b"^\\w\\s\\W$", b"a !", True),
    ],
)
def test_posix_translation_matches_like_glibc(
    pattern: bytes, subject: bytes, matches: bool
) -> None:
    compiled, _ = compile_posix(pattern)
    assert compiled.engine == "re2"
    assert (compiled.search(subject) is not None) is matches


@pytest.mark.parametrize("pattern", [b"*a", b"a{1", b"[b-a]", b"(x", b"[[:foo:]]", b"\\1(a)"])
def test_posix_errors_postfix_also_rejects(pattern: bytes) -> None:
    with pytest.raises(PatternError):
        compile_posix(pattern)


@pytest.mark.parametrize(
    ("pattern", "engine"),
    [
        (b"(a)\\1", "fallback"),
        (b"\\<word\\>", "fallback"),
        (b"a{2000}", "fallback"),
        (b"(a+)+b", "re2"),  # catastrophic for backtrackers, linear in RE2
    ],
)
def test_which_posix_patterns_need_the_fallback(pattern: bytes, engine: str) -> None:
    compiled, _ = compile_posix(pattern)
    assert compiled.engine == engine


@pytest.mark.parametrize(
    ("pattern", "engine"),
    [
        (b"foo(?=bar)", "fallback"),
        (b"(?<!x)y", "fallback"),
        (b"(a)\\1", "fallback"),
        (b"a++", "fallback"),
        (b"\\d+\\h\\R", "re2"),
        (b"a # comment\n b", "re2"),
    ],
)
def test_which_pcre_patterns_need_the_fallback(pattern: bytes, engine: str) -> None:
    flags = PcreFlags(extended=b"#" in pattern)
    assert compile_pcre(pattern, flags).engine == engine


def test_pcre_free_spacing_strips_whitespace_and_comments() -> None:
    compiled = compile_pcre(b"^a \\  b # note\n c$", PcreFlags(extended=True))
    assert compiled.search(b"a bc") is not None


def test_pcre_recursion_is_refused_with_a_reason() -> None:
    with pytest.raises(PatternError, match="not supported"):
        compile_pcre(b"(a(?R)?b)", PcreFlags())


def _big_table() -> Table:
    lines = [f"/^From:.*@spam{n}\\.example$/ REJECT spam {n}" for n in range(2000)]
    lines.insert(500, "!/^(From|To|Subject):/ DUNNO other header")
    lines.insert(1000, "if /^Subject:/")
    lines.insert(1001, "/free (money|pills)/ REJECT subject $1")
    lines.insert(1002, "endif")
    return table("\n".join(lines) + "\n")


BIG_KEYS = [
    "From: a@spam1999.example",
    "From: a@spam7.example",
    "From: a@spam7.example.org",
    "Subject: free pills",
    "X-Other: free pills",
    "To: b@example.net",
]


def test_large_table_prefilter_gives_the_same_first_hit_as_walking_every_rule() -> None:
    t = _big_table()
    assert t._prefilter is not None
    with_filter = [result(t, k) for k in BIG_KEYS]
    t._prefilter = None
    assert with_filter == [result(t, k) for k in BIG_KEYS]
    assert with_filter[:4] == ["REJECT spam 1999", "REJECT spam 7", None, "REJECT subject pills"]
    assert with_filter[4] == "DUNNO other header"


def test_prefilter_that_gives_up_falls_back_to_every_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    t = _big_table()
    assert t._prefilter is not None
    monkeypatch.setattr(t._prefilter, "candidates", lambda subject: None)
    assert result(t, "From: a@spam1999.example") == "REJECT spam 1999"
