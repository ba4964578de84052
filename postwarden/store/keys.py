"""Every Redis key postwarden writes, and how long it lives.

One function per key family, each returning `<prefix><family>:...`. Keys that
one Lua script touches together share a hash tag (`{...}`), so the script is
legal on Redis Cluster. Families whose encoding may change carry a version
segment (`v1`). Nothing is written without a TTL: the TTL of each family is
given here or (when it comes from config) by the check that writes it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# Counters for `postwarden stat` keep a rolling lifetime: refreshed on every
# write, gone after a year of silence.
STAT_TTL = 400 * 86400


def digest(*parts: str) -> str:
    """A short stable digest so user-controlled strings never shape key names."""
    h = hashlib.blake2b("\0".join(parts).encode("utf-8", "surrogateescape"), digest_size=12)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "pw:"

    # -- greylisting (policyd/checks/greylist.py); TTLs from policyd.greylist:
    # pending triplet until first seen + retry_window, passed triplet and
    # auto-whitelisted client max_age from last use. The client network is
    # the hash tag: greylist_check.lua touches a triplet and its client.
    def greylist_triplet(self, network: str, sender: str, recipient: str) -> str:
        return f"{self.prefix}grey:v1:{{{network}}}:t:{digest(network, sender, recipient)}"

    def greylist_client(self, network: str) -> str:
        return f"{self.prefix}grey:v1:{{{network}}}:c"

    def greylist_pattern(self, network: str = "*", kind: str = "*") -> str:
        """SCAN pattern: kind "t" triplets, "c" clients (no glob chars in networks)."""
        net = network if network == "*" else f"{{{network}}}"
        return f"{self.prefix}grey:v1:{net}:{kind}" + (":*" if kind == "t" else "")

    # -- rate limits (policyd/checks/ratelimit.py); TTL 2 x window
    def ratelimit(self, subject: str, rule: str, window: str) -> str:
        return f"{self.prefix}rl:{{{digest(subject)}}}:{rule}:{window}"

    def ratelimit_sum(self, subject: str, rule: str, window: str) -> str:
        """Running total of a weighted (bytes) log; same tag and TTL as the log."""
        return f"{self.ratelimit(subject, rule, window)}:sum"

    def known_recipients(self, sender: str) -> str:
        return f"{self.prefix}rl:{{{digest(sender)}}}:known"

    # -- SPF result cache (policyd/checks/spf.py); TTL policyd.spf.cache_ttl.
    # `identity` is "mailfrom" or "helo": the same (ip, domain, helo) can
    # give different answers for the two (RFC 7208 section 2.3/2.4).
    def spf_result(self, identity: str, client_ip: str, domain: str, helo: str) -> str:
        return f"{self.prefix}spf:v1:{identity}:{digest(client_ip, domain, helo)}"

    # -- Bayes statistics (postwarden/bayes/store.py). One scope ("global",
    # or "u:<digest>" per user) is one hash tag, so the learn and classify
    # scripts touch one slot on Redis Cluster. Token hashes (fields s, h)
    # live milters.spam.bayes.token_ttl after their last learn
    # (rare_token_ttl while seen in one message only); the state hash
    # (learned counts) lives STAT_TTL; a learned message's class
    # learned_ttl.
    def bayes_token(self, scope: str, token_id: str) -> str:
        return f"{self.prefix}bayes:v1:{{{scope}}}:t:{token_id}"

    def bayes_state(self, scope: str) -> str:
        return f"{self.prefix}bayes:v1:{{{scope}}}:state"

    def bayes_learned(self, scope: str, message_digest: str) -> str:
        return f"{self.prefix}bayes:v1:{{{scope}}}:m:{message_digest}"

    def bayes_states_pattern(self) -> str:
        """SCAN pattern of every scope's state key (one per scope that learned)."""
        return f"{self.prefix}bayes:v1:{{*}}:state"

    def bayes_pattern(self, scope: str, kind: str) -> str:
        """SCAN pattern of one scope's "t" (token), "m" (message) or "d"
        (learned message's tokens) keys."""
        return f"{self.prefix}bayes:v1:{{{scope}}}:{kind}:*"

    def bayes_svm_marker(self) -> str:
        """Set while the statistics are the svm's: learns keep token ids
        whatever their own config says (BayesStore.keeps_docs)."""
        return f"{self.prefix}bayes:v1:svm"

    # The linear model (postwarden/bayes/model.py) is fitted from the learned
    # messages' token ids, kept for model_window (at most learned_ttl); it is
    # written to a staging hash and renamed over the live one, so a reader
    # sees the old model or the new one, never half of each.
    def bayes_doc(self, scope: str, message_digest: str) -> str:
        return f"{self.prefix}bayes:v1:{{{scope}}}:d:{message_digest}"

    def bayes_model(self, scope: str) -> str:
        return f"{self.prefix}bayes:v1:{{{scope}}}:model"

    def bayes_model_staging(self, scope: str) -> str:
        return f"{self.prefix}bayes:v1:{{{scope}}}:model-staging"

    def bayes_fit_lock(self, scope: str) -> str:
        return f"{self.prefix}bayes:v1:{{{scope}}}:fit-lock"

    # -- DKIM key records (milters/dkim/records.py): the TXT record text of
    # <selector>._domainkey.<domain>; TTL the record's own, at most
    # milters.dkim.key_cache_ttl.
    def dkim_key_record(self, name: str) -> str:
        return f"{self.prefix}dkimkey:v1:{digest(name.lower())}"

    # -- DNSBL/URIBL answers (milters/spam/dnsbl.py); TTL the answer's own,
    # capped by milters.spam.dnsbl.cache_ttl_max (cache_ttl_negative if unlisted).
    def dnsbl_answer(self, qname: str) -> str:
        return f"{self.prefix}dnsbl:v1:{digest(qname.lower())}"

    # -- per-installation secrets (random, made once with SET NX, no TTL): e.g.
    # what places a message in a DMARC pct= sample (milters/dkim/dmarc.py)
    def secret(self, name: str) -> str:
        return f"{self.prefix}secret:v1:{name}"

    # -- counters for `postwarden stat`; STAT_TTL
    def stat(self, name: str) -> str:
        return f"{self.prefix}stat:{name}"

    def stat_pattern(self) -> str:
        return f"{self.prefix}stat:*"
