"""postwarden: milters and a policy daemon that guard a Postfix/Dovecot mail server."""

__version__ = "0.1.0"
