"""`postwarden dkim keygen|check-dns|rotate`: DKIM key tooling.

keygen writes a private key (mode 0600, owned by the service user when run
as root) and prints the TXT record to publish, split into 255-byte strings;
check-dns compares what DNS publishes with a key file; rotate prints the
steps of a key rotation for a domain in the config. Key file format and
record checks live in `postwarden.dkim_keys`.
"""

from __future__ import annotations

import datetime
import os
import pwd
import sys
from pathlib import Path

import click
import dns.exception
import dns.resolver

from postwarden.cli.options import EX_UNAVAILABLE, config_option, load_or_exit
from postwarden.dkim_keys import (
    KeyFileError,
    PrivateKey,
    dns_record,
    generate_key,
    read_private_key,
    record_problems,
    write_private_key,
)
from postwarden.resolver import make_resolver

EX_DATAERR = getattr(os, "EX_DATAERR", 65)
EX_CANTCREAT = getattr(os, "EX_CANTCREAT", 73)
SERVICE_USER = "postwarden"
ALGORITHM_NAMES = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}


@click.group()
def dkim() -> None:
    """DKIM signing keys: generate, check DNS, rotate."""


@dkim.command()
@click.option("--domain", required=True, help="signing domain (d=)")
@click.option("--selector", required=True, help="selector (s=)")
@click.option("--algorithm", type=click.Choice(["rsa", "ed25519"]), default="rsa")
@click.option("--bits", type=int, default=2048, show_default=True, help="RSA key size")
@click.option(
    "--directory",
    type=click.Path(file_okay=False),
    default="/etc/postwarden/dkim",
    show_default=True,
    help="where DOMAIN.SELECTOR.key is written",
)
def keygen(domain: str, selector: str, algorithm: str, bits: int, directory: str) -> None:
    """Write a new private key and print the DNS TXT record to publish."""
    path = Path(directory) / f"{domain}.{selector}.key"
    try:
        key = generate_key(ALGORITHM_NAMES[algorithm], bits)
        Path(directory).mkdir(parents=True, exist_ok=True, mode=0o750)
        write_private_key(path, key)
    except KeyFileError as exc:
        raise click.BadParameter(str(exc), param_hint="--bits") from None
    except FileExistsError:
        click.echo(f"{path} exists already; not overwritten", err=True)
        sys.exit(EX_CANTCREAT)
    except OSError as exc:
        click.echo(f"cannot write {path}: {exc.strerror}", err=True)
        sys.exit(EX_CANTCREAT)
    _give_to_service_user(path)
    record = dns_record(domain, selector, key)
    click.echo(f"; private key written to {path} (mode 0600)")
    click.echo("; publish this record, then add the key to milters.dkim.keys:")
    click.echo(record.zone_line())
    click.echo(";   - domain: " + domain)
    click.echo(";     selector: " + selector)
    click.echo(f";     key_file: {path}")
    click.echo(f";     algorithm: {ALGORITHM_NAMES[algorithm]}")


def _give_to_service_user(path: Path) -> None:
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return  # no service user on this host: root keeps it
    os.chown(path, user.pw_uid, user.pw_gid)


def _lookup(resolver: dns.resolver.Resolver, name: str) -> str | None:
    try:
        answer = resolver.resolve(name + ".", "TXT", raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    if answer.rrset is None:
        return None
    texts = [b"".join(r.strings).decode("ascii", "replace") for r in answer.rrset]
    return texts[0] if texts else None


@dkim.command("check-dns")
@config_option
@click.argument("domain")
@click.argument("selector")
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False), default=None)
def check_dns(config_file: str | None, domain: str, selector: str, key_file: str | None) -> None:
    """Compare the TXT record of SELECTOR._domainkey.DOMAIN with its key file.

    The key file is the one milters.dkim.keys names for DOMAIN and SELECTOR,
    or --key-file. Exit 0 when DNS publishes exactly that key.
    """
    _, settings = load_or_exit(config_file)
    key: PrivateKey | None = None
    try:
        if key_file is not None:
            key = _read_any(key_file)
        else:
            for entry in settings.milters.dkim.keys:
                if entry.domain.lower() == domain.lower() and entry.selector == selector:
                    assert entry.key_file is not None
                    key = read_private_key(entry.key_file, entry.algorithm)
    except KeyFileError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EX_DATAERR)
    if key is None:
        click.echo(f"no key for {domain} selector {selector} in milters.dkim.keys", err=True)
        sys.exit(EX_DATAERR)
    name = f"{selector}._domainkey.{domain.removeprefix('*.')}"
    try:
        text = _lookup(make_resolver(settings.dns), name)
    except dns.exception.DNSException as exc:
        click.echo(f"{name}: DNS lookup failed: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)
    problems = record_problems(text, key)
    if problems:
        for p in problems:
            click.echo(f"{name}: {p}")
        click.echo("publish:\n" + dns_record(domain.removeprefix("*."), selector, key).zone_line())
        sys.exit(EX_DATAERR)
    click.echo(f"{name}: OK, DNS publishes the key")


def _read_any(path: str) -> PrivateKey:
    try:
        return read_private_key(path, "rsa-sha256")
    except KeyFileError:
        return read_private_key(path, "ed25519-sha256")


@dkim.command()
@config_option
@click.argument("domain")
def rotate(config_file: str | None, domain: str) -> None:
    """Print the steps to rotate DOMAIN's key to a new selector."""
    _, settings = load_or_exit(config_file)
    entries = [k for k in settings.milters.dkim.keys if k.domain.lower() == domain.lower()]
    today = datetime.date.today()
    new_selector = f"s{today:%Y%m}"
    start = today + datetime.timedelta(days=7)
    algorithm = entries[0].algorithm if entries else "rsa-sha256"
    short = "ed25519" if algorithm.startswith("ed25519") else "rsa"
    current = ", ".join(f"{k.selector} ({k.algorithm})" for k in entries) or "none"
    click.echo(f"Rotating the DKIM key of {domain} (selectors now: {current})")
    click.echo(f"1. postwarden dkim keygen --domain {domain} --selector {new_selector}")
    click.echo(f"   --algorithm {short}   and publish the TXT record it prints.")
    click.echo("2. Add it to milters.dkim.keys, signing from a date after DNS has spread:")
    click.echo(f"     - {{domain: {domain}, selector: {new_selector}, key_file: "
               f"/etc/postwarden/dkim/{domain}.{new_selector}.key, algorithm: {algorithm}, "
               f"not_before: '{start.isoformat()}'}}")  # fmt: skip
    click.echo(f"3. postwarden dkim check-dns {domain} {new_selector}; then reload (SIGHUP).")
    click.echo(f"4. From {start.isoformat()} the new selector signs; keep the old selector's")
    click.echo("   record published for a week or two (mail in flight and in queues is")
    click.echo("   verified later), then remove its entry from milters.dkim.keys and publish")
    click.echo("   its record with an empty p= (revoked, RFC 6376 section 3.6.1).")
