"""The spam milter's greylist action, on the policy daemon's greylist data.

Same triplet (postwarden/greylist_triplet.py), same keys, same Lua script
(greylist_check.lua) and the timings of `policyd.greylist`: a triplet that
passed greylisting before passes here, a new one is deferred and passes on a
retry after `delay` (RFC 5321 section 4.5.4.1: clients retry a 4xx).
"""

from __future__ import annotations

import ipaddress

from milters.context import MessageContext
from milters.message import Envelope
from postwarden.greylist_triplet import Normaliser, client_network
from postwarden.store.keys import STAT_TTL

SCRIPT = "greylist_check"
STAT_DEFERRED = "greylisted"
STAT_PASSED = "greylist_passed"


def greylist_pass(env: Envelope, recipient: str, ctx: MessageContext) -> tuple[bool, float]:
    """(passed, seconds still to wait) for one recipient's triplet.

    No client address (a local submission, `postwarden scan` without
    --client): nothing to greylist, passes. Raises StoreUnavailable.
    """
    ip = env.client_address
    if ip is None:
        return True, 0.0
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    g = ctx.settings.policyd.greylist
    n = Normaliser.from_settings(g)
    network = client_network(ip, g.ipv4_prefix, g.ipv6_prefix)
    sender, rcpt = n.sender(env.mail_from), n.recipient(recipient)
    store = ctx.store
    keys = [store.keys.greylist_triplet(network, sender, rcpt), store.keys.greylist_client(network)]
    verdict, _first, seconds, _count = store.run(
        SCRIPT,
        keys,
        [f"{ctx.clock.now():.3f}", float(g.delay), float(g.retry_window), float(g.max_age),
         g.auto_whitelist_clients, float(g.auto_whitelist_interval),
         network, sender, rcpt, STAT_TTL],
    )  # fmt: skip
    verdict = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
    if verdict == "defer":
        ctx.stats.add(STAT_DEFERRED)
        return False, float(seconds)
    return True, 0.0
