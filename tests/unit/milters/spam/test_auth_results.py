"""SPF/DKIM/DMARC/ARC symbols come only from headers our own services wrote."""

from __future__ import annotations

from tests.unit.milters.spam.engine_setup import engine, message, names, scan

OURS = "mx.example.net"


def test_our_authentication_results_give_dkim_dmarc_arc_and_spf_symbols() -> None:
    eng, svc = engine({"authserv_id": OURS})
    ar = (f"{OURS}; dkim=pass header.d=example.org header.s=s1; spf=fail "
          "smtp.mailfrom=example.org; dmarc=fail (p=reject dis=none) header.from=example.org; "
          "arc=none")  # fmt: skip
    v = scan(eng, svc, message(headers={"Authentication-Results": ar}))
    assert {"R_DKIM_ALLOW", "R_SPF_FAIL", "DMARC_POLICY_REJECT", "ARC_NA"} <= names(v)
    [dkim] = [s for s in v.symbols if s.name == "R_DKIM_ALLOW"]
    assert dkim.options == ("example.org",) and dkim.score < 0


def test_dmarc_fail_is_scored_by_the_policy_that_applies_not_the_records_p() -> None:
    # A subdomain judged by its organisation's record: sp=none applies.
    eng, svc = engine({"authserv_id": OURS})
    ar = (f"{OURS}; dkim=none; dmarc=fail (p=reject sp=none dis=none) "
          "header.from=news.example.org policy.dmarc=none")  # fmt: skip
    v = scan(eng, svc, message(headers={"Authentication-Results": ar}))
    assert "DMARC_POLICY_SOFTFAIL" in names(v) and "DMARC_POLICY_REJECT" not in names(v)


def test_results_claimed_by_another_authserv_id_are_ignored() -> None:
    eng, svc = engine({"authserv_id": OURS})
    forged = "mx.attacker.example; dkim=pass header.d=bank.example; dmarc=pass"
    v = scan(eng, svc, message(headers={"Authentication-Results": forged}))
    assert not {"R_DKIM_ALLOW", "DMARC_POLICY_ALLOW"} & names(v)


def test_received_spf_from_our_policy_daemon_gives_the_spf_symbol() -> None:
    eng, svc = engine({"authserv_id": OURS}, policyd={"spf": {"receiver": OURS}})
    ours = (f"softfail ({OURS}: domain of example.org discourages use of 198.51.100.7 as a "
            f"sender) client-ip=198.51.100.7; envelope-from=alice@example.org; receiver={OURS}; "
            "identity=mailfrom")  # fmt: skip
    assert "R_SPF_SOFTFAIL" in names(scan(eng, svc, message(headers={"Received-SPF": ours})))
    theirs = ours.replace(f"receiver={OURS}", "receiver=elsewhere.example").replace(
        "softfail", "pass", 1
    )
    assert "R_SPF_ALLOW" not in names(scan(eng, svc, message(headers={"Received-SPF": theirs})))
