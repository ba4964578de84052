"""From per-token counts to one spam probability.

Two proven combining methods, picked by `BayesSettings.method`:

- `chi2`: Gary Robinson's method as SpamBayes and SpamAssassin use it
  ("A Statistical Approach to the Spam Problem", Linux Journal 2003): each
  token's probability is smoothed towards 0.5 by its evidence,
  f(w) = (s*x + n*p(w)) / (s + n), tokens nearer 0.5 than `min_strength` are
  ignored, the `max_tokens` most telling ones are combined by Fisher's
  inverse chi-square for spamminess S and hamminess H, and the result is
  (1 + S - H) / 2.
- `naive`: the plain naive-Bayes log-likelihood ratio over the same chosen
  tokens, squashed by a logistic; kept as the measured alternative.

The accuracy bench (bench/accuracy.py) measures both on the training part
and the default is the better one there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CombineParams:
    method: str = "chi2"
    # Chosen by 5-fold cross-validation on the accuracy bench's training
    # part (bench/accuracy.py --tune): s = 0.1 lets a token seen in a few
    # messages speak (SpamAssassin's 0.45 mutes them on a small corpus);
    # 0.346 is SpamAssassin's minimum strength.
    strength: float = 0.1  # Robinson's s
    prior: float = 0.5  # Robinson's x
    min_strength: float = 0.346  # ignore tokens with |f - 0.5| below this
    max_tokens: int = 400


def chi2q(x2: float, v: int) -> float:
    """P(chi-square with v (even) degrees of freedom >= x2)."""
    m = x2 / 2.0
    total = term = math.exp(-m)
    for i in range(1, v // 2):
        term *= m / i
        total += term
    return min(total, 1.0)


def token_prob(
    spam: int, ham: int, spam_learns: int, ham_learns: int, params: CombineParams
) -> float:
    """Robinson's f(w): the spam probability of one token, smoothed."""
    n = spam + ham
    if n == 0:
        return params.prior
    sr = spam / max(spam_learns, 1)
    hr = ham / max(ham_learns, 1)
    p = sr / (sr + hr) if sr + hr > 0 else params.prior
    s = params.strength
    return (s * params.prior + n * p) / (s + n)


@dataclass(frozen=True, slots=True)
class Combined:
    probability: float
    used: int  # tokens that took part


def combine(
    counts: Iterable[tuple[int, int]],
    spam_learns: int,
    ham_learns: int,
    params: CombineParams,
) -> Combined:
    """Combine per-token (spam, ham) counts into a probability in [0, 1]."""
    probs = []
    for spam, ham in counts:
        if spam == 0 and ham == 0:
            continue
        f = token_prob(spam, ham, spam_learns, ham_learns, params)
        if abs(f - 0.5) >= params.min_strength:
            probs.append(f)
    if not probs:
        return Combined(0.5, 0)
    probs.sort(key=lambda f: -abs(f - 0.5))
    probs = probs[: params.max_tokens]
    # Keep the products off the floor of double precision.
    probs = [min(max(f, 1e-6), 1 - 1e-6) for f in probs]
    n = len(probs)
    if params.method == "naive":
        llr = sum(math.log(f / (1 - f)) for f in probs)
        llr = max(min(llr, 700.0), -700.0)
        return Combined(1.0 / (1.0 + math.exp(-llr)), n)
    ln_s = sum(math.log(1.0 - f) for f in probs)
    ln_h = sum(math.log(f) for f in probs)
    spamminess = 1.0 - chi2q(-2.0 * ln_s, 2 * n)
    hamminess = 1.0 - chi2q(-2.0 * ln_h, 2 * n)
    return Combined((1.0 + spamminess - hamminess) / 2.0, n)
