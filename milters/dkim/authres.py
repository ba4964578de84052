"""Authentication-Results (RFC 8601): the one header carrying our verdicts.

We write one header per message with our `authserv-id`, one `dkim=` result
per signature (`header.d`, `header.s`, `header.a`, and the first 8
characters of `header.b` so equal-domain signatures can be told apart,
RFC 6008), then `arc=` and `dmarc=` when evaluated.

RFC 8601 section 5: a receiver must remove Authentication-Results headers
that claim its own authserv-id before adding its own, or a sender could
forge our verdicts; headers of other authserv-ids are kept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import authres

from milters.dkim.arc import ArcResult
from milters.dkim.dmarc import DmarcResult
from milters.dkim.verify import SignatureResult
from milters.message import HeaderEdit, HeaderOp, Message

HEADER = "Authentication-Results"

# authserv-id = value (token or quoted-string), after optional comments.
_AUTHSERV_ID = re.compile(r'^\s*(?:\([^)]*\)\s*)*(?:"([^"]*)"|([^\s;()"]+))')


def authserv_id_of(value: str) -> str:
    """The authserv-id an Authentication-Results value claims ("" if none)."""
    m = _AUTHSERV_ID.match(value.replace("\r\n", " ").replace("\n", " "))
    if not m:
        return ""
    return (m.group(1) if m.group(1) is not None else m.group(2)).strip().lower()


def forged_removals(msg: Message, authserv_id: str) -> list[HeaderEdit]:
    """DELETE edits for every A-R header claiming `authserv_id`.

    Highest occurrence first, so removing one does not renumber the next.
    """
    ours = authserv_id.lower()
    hits = [
        n for n, value in enumerate(msg.get_all(HEADER), start=1) if authserv_id_of(value) == ours
    ]
    return [HeaderEdit(HeaderOp.DELETE, HEADER, "", n) for n in reversed(hits)]


def _prop(name: str, value: str) -> authres.AuthenticationResultProperty:
    return authres.AuthenticationResultProperty("header", name, value)


def dkim_clause(r: SignatureResult) -> authres.AuthenticationResult:
    props = []
    if r.domain:
        props.append(_prop("d", r.domain))
    if r.selector:
        props.append(_prop("s", r.selector))
    if r.algorithm:
        props.append(_prop("a", r.algorithm))
    if r.b_prefix:
        props.append(_prop("b", r.b_prefix))
    return authres.AuthenticationResult(
        "dkim", result=r.result, reason=r.reason or None, properties=props
    )


def arc_clause(r: ArcResult) -> authres.AuthenticationResult:
    comment = f"i={r.instance} d={r.sealer}" if r.instance else None
    return authres.AuthenticationResult(
        "arc", result=r.result, result_comment=comment, reason=r.reason or None
    )


def dmarc_clause(r: DmarcResult, disposition: str) -> authres.AuthenticationResult:
    """`dmarc=fail (p=reject sp=reject dis=none) header.from=example.org
    policy.dmarc=reject`: the record's p= and sp= as found, what we did
    (dis=), and the policy that applies to this From domain (sp= for a
    subdomain judged by its organisational domain's record, RFC 7489
    section 6.6.3), which the spam milter scores."""
    comment = None
    if r.policy is not None:
        comment = f"p={r.policy.p} sp={r.policy.sp} dis={disposition}"
    return authres.AuthenticationResult(
        "dmarc",
        result=r.result,
        result_comment=comment,
        # Only errors carry a reason; pass/fail say enough with the policy.
        reason=(r.reason or None) if r.result == "temperror" else None,
        properties=[
            authres.AuthenticationResultProperty("header", "from", r.from_domain),
            *(
                [authres.AuthenticationResultProperty("policy", "dmarc", r.requested)]
                if r.policy is not None
                else []
            ),
        ],
    )


def header_value(
    authserv_id: str,
    dkim_results: Sequence[SignatureResult],
    extra: Sequence[authres.AuthenticationResult] = (),
) -> str:
    """The value of our Authentication-Results header (`dkim=none` when unsigned)."""
    clauses = [dkim_clause(r) for r in dkim_results]
    if not dkim_results:
        clauses.append(authres.AuthenticationResult("dkim", result="none"))
    clauses.extend(extra)
    header = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=clauses)
    return fold_clauses(header.header_value())


def fold_clauses(value: str) -> str:
    """One clause per line (CRLF + tab), as most MTAs write it."""
    return value.replace("; ", ";\r\n\t")
