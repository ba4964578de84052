"""`milters.spam.bayes`: the Bayes classifier (postwarden/bayes) and `postwarden learn`.

The statistics are global by default (every user's Junk moves train one
shared filter, as Onlime does); `per_user` keeps one set per mailbox user
instead. Bayes says nothing until it has learned `min_learns` spam AND
`min_learns` ham (NethServer's rule: 200 each), and a symbol says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from postwarden.config.fields import setting
from postwarden.config.units import Duration


class CombineMethod(StrEnum):
    """How token probabilities become one (postwarden/bayes/combine.py).

    chi2: Robinson's smoothing and Fisher's inverse chi-square (SpamBayes,
    SpamAssassin); naive: the naive-Bayes log-likelihood sum; svm: a linear
    support vector machine fitted from the learned messages
    (postwarden/bayes/model.py; `postwarden learn` refits it), chi2 until
    the first fit.
    """

    CHI2 = "chi2"
    NAIVE = "naive"
    SVM = "svm"


class UserName(StrEnum):
    """What names a user's statistics with `per_user` (store.user_name).

    address: the whole recipient address, which is Dovecot's user name
    with virtual users (alice@example.org). local_part: what precedes the @,
    for system users who log in to Dovecot as "alice" while their mail is
    addressed to alice@example.org.
    """

    ADDRESS = "address"
    LOCAL_PART = "local_part"


@dataclass(frozen=True, slots=True)
class AutolearnSettings:
    """Learn from the milter's own clearest verdicts (SpamAssassin's
    bayes_auto_learn): the score WITHOUT the Bayes symbols decides, so Bayes
    never teaches itself what it already believes. Off by default: a rule
    that misfires would then train the filter wrongly at scale."""

    enabled: bool = setting(False)
    spam_score: float = setting(12.0, doc="rules' score at or above this: learn as spam")
    ham_score: float = setting(-2.0, doc="rules' score at or below this: learn as ham")

    def validate_node(self) -> list[str]:
        if self.ham_score >= self.spam_score:
            return ["ham_score must be below spam_score"]
        return []


@dataclass(frozen=True, slots=True)
class BayesSettings:
    enabled: bool = setting(True)
    min_learns: int = setting(200, min=1, doc="spam AND ham messages learned before use")
    method: CombineMethod = setting(CombineMethod.CHI2)
    refit_interval: Duration = setting(
        Duration(600.0), min=0, doc="a learn refits the svm model at most this often"
    )
    model_window: Duration = setting(
        Duration(90 * 86400.0), min=86400, doc="svm: fitted from messages learned this recently"
    )
    spam_probability: float = setting(
        0.5, min=0.5, max=1.0, doc="BAYES_SPAM at or above this probability"
    )
    ham_probability: float = setting(
        0.5, min=0.0, max=0.5, doc="BAYES_HAM at or below this probability"
    )
    per_user: bool = setting(False, doc="one statistics set per mailbox user")
    user_name: UserName = setting(
        UserName.ADDRESS, doc="per_user: the recipient address, or its local part only"
    )
    recipient_delimiter: str = setting(
        "+", doc="per_user: Postfix recipient_delimiter; alice+lists@ is alice@"
    )
    global_fallback: bool = setting(
        True, doc="per_user: judge by the global set until the user learned min_learns"
    )
    token_ttl: Duration = setting(Duration(180 * 86400.0), min=86400, doc="after last learn")
    rare_token_ttl: Duration = setting(
        Duration(30 * 86400.0), min=3600, doc="tokens seen in one message only"
    )
    max_tokens: int = setting(3_000_000, min=1000, doc="cap: no new tokens past it")
    learned_ttl: Duration = setting(
        Duration(400 * 86400.0), min=86400, doc="how long a learned message is remembered"
    )
    autolearn: AutolearnSettings = setting(
        factory=AutolearnSettings, doc="learn from very high and very low scores"
    )

    def validate_node(self) -> list[str]:
        problems = []
        if self.rare_token_ttl > self.token_ttl:
            problems.append("rare_token_ttl must not exceed token_ttl")
        return problems
