"""The one exception root every postwarden error derives from.

Callers catch `PostwardenError` subclasses by meaning, never library exceptions:
checks do not know redis-py or dnspython exist.
"""

from __future__ import annotations


class PostwardenError(Exception):
    """Root of every error postwarden raises on purpose."""


class StoreUnavailable(PostwardenError):
    """Redis could not be reached or answered with a connection-level error.

    Services map this onto their `on_error` fallback; redis-py's retry and
    connection pool reconnect by themselves on the next call.
    """


class ResolverUnavailable(PostwardenError):
    """DNS did not answer in time (or at all); the caller picks its temperror path."""


class EmbeddedRedisError(PostwardenError):
    """The private redis-server could not be started."""


class StartupError(PostwardenError):
    """A service cannot start until the admin fixes something outside the
    config's syntax (a missing user, a socket directory Postfix cannot
    reach, a port in use). The message says what to fix; exit status 78
    (EX_CONFIG), so systemd's RestartPreventExitStatus stops retrying."""


class AlreadyRunning(PostwardenError):
    """Another `postwarden run` holds the lock file of the same state_dir."""
