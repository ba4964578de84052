"""`postwarden learn spam|ham|forget [-c FILE] [--user NAME] PATH...`: train Bayes.

PATH is a message file, a Maildir folder (its new/ and cur/), a plain
directory of message files, an mbox file, or `-` for one message on stdin.
Prints a summary (learned, already known, relearned as the other class,
skipped with the reason). Exit status: 0 when every message was handled,
EX_DATAERR (65) when something was skipped, EX_UNAVAILABLE (69) when Redis
is away, EX_NOPERM (77) when a Redis ACL forbids a command,
EX_CONFIG (78) for a bad config.

`--user` picks the user's own statistics when `milters.spam.bayes.per_user`
is on (contrib/dovecot passes Dovecot's authenticated user name); with
global statistics it changes nothing. After a run that changed the
statistics, the svm model is refitted when due (postwarden/bayes/refit.py:
at once after 50 changes or with no model yet, else at most every
`refit_interval`), unless `--no-refit` (the Dovecot pipe: Dovecot kills a
pipe program after sieve_pipe_exec_timeout, 10 s, and a fit of a large
corpus takes longer). `learn upkeep` recounts the token hashes left after rare
tokens expired (the number the `max_tokens` cap compares against) and
refits the model if anything was learned since its fit: the global scope,
and with per_user every user's scope found in Redis (or only `--user`'s).
Under chi2 it drops what svm left (BayesStore.drop_svm_data): learns keep
token ids while the statistics are marked as the svm's, whatever the
learn's own config says (the Dovecot pipe's does not name the method).
"""

from __future__ import annotations

import json
import sys

import click
import redis

from postwarden.bayes import learning
from postwarden.bayes.refit import RefitOutcome, refit
from postwarden.bayes.sources import iter_paths
from postwarden.bayes.store import GLOBAL_SCOPE, BayesStore, scope_for
from postwarden.cli.options import EX_UNAVAILABLE, config_option, load_or_exit
from postwarden.config.schema import Settings
from postwarden.config.sections.bayes import CombineMethod
from postwarden.errors import StoreUnavailable
from postwarden.store.client import Store, open_configured_store

EX_DATAERR = 65
EX_NOPERM = 77
PROGRESS_EVERY = 500


@click.group()
def learn() -> None:
    """Train the Bayes classifier (or make it forget)."""


def _store(settings: Settings) -> Store:
    return open_configured_store(settings)


def _run(
    action: str,
    config_file: str | None,
    user: str | None,
    paths: tuple[str, ...],
    as_json: bool,
    quiet: bool,
    no_refit: bool = False,
) -> None:
    _, settings = load_or_exit(config_file)
    bayes = settings.milters.spam.bayes
    store = _store(settings)
    bstore = BayesStore(store, bayes)
    scope = scope_for(bayes, user)
    show_progress = not quiet and sys.stderr.isatty()
    last = [0]

    def progress(s: learning.LearnSummary) -> None:
        if show_progress and s.seen - last[0] >= PROGRESS_EVERY:
            last[0] = s.seen
            click.echo(f"\r{s.seen} messages ...", err=True, nl=False)

    outcome: RefitOutcome | None = None
    try:
        summary = learning.learn(
            bstore, scope, action, iter_paths(list(paths), sys.stdin.buffer), progress,
            subject_prefix=settings.milters.spam.subject_prefix,
        )  # fmt: skip
        changed = summary.learned + summary.relearned + summary.forgotten
        outcome = RefitOutcome("left to upkeep") if no_refit else _refit(bstore, scope, changed)
    except StoreUnavailable as exc:
        click.echo(f"postwarden learn: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)
    except redis.exceptions.NoPermissionError as exc:
        # A Redis ACL user without the rights lua/bayes_learn.lua needs
        # (contrib/dovecot/README.md lists them).
        click.echo(f"postwarden learn: redis refused: {exc}", err=True)
        sys.exit(EX_NOPERM)
    finally:
        store.close()
    if show_progress and last[0]:
        click.echo("", err=True)
    if as_json:
        out = summary.as_dict()
        out["model"] = outcome.status if outcome else None
        click.echo(json.dumps(out, sort_keys=True))
    elif not quiet or summary.skipped:
        _print_summary(summary)
        if outcome is not None and outcome.status == "fitted":
            click.echo(outcome.describe())
    if summary.skipped:
        sys.exit(EX_DATAERR)


def _refit(bstore: BayesStore, scope: str, changed: int) -> RefitOutcome | None:
    """Refit the svm model after a run that changed something (refit.py
    says when it is due). Learning stands if the refit cannot run: a Redis
    ACL user without the refit's rights (contrib/dovecot/README.md) leaves
    it to the next `learn` or `learn upkeep` that has them."""
    if bstore.settings.method != CombineMethod.SVM or changed == 0:
        return None
    try:
        return refit(bstore, scope, changed_now=changed)
    except redis.exceptions.NoPermissionError as exc:
        click.echo(f"postwarden learn: model not refitted, redis refused: {exc}", err=True)
        return RefitOutcome("refused")
    except StoreUnavailable as exc:  # what was learned is in Redis already
        click.echo(f"postwarden learn: model not refitted: {exc}", err=True)
        return RefitOutcome("unavailable")


def _print_summary(s: learning.LearnSummary) -> None:
    if s.action == "forget":
        click.echo(f"forgot {s.forgotten}, not learned before {s.unknown}, "
                   f"skipped {len(s.skipped)}")  # fmt: skip
    else:
        other = "ham" if s.action == "spam" else "spam"
        click.echo(f"learned {s.learned} as {s.action}, already known {s.known}, "
                   f"relearned {s.relearned} (were {other}), skipped {len(s.skipped)}")  # fmt: skip
    for path, reason in s.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)


def _command(action: str, help_text: str) -> click.Command:
    @click.command(name=action, help=help_text)
    @config_option
    @click.option("--user", default=None, metavar="NAME",
                  help="the mailbox user whose statistics to train (with per_user)")  # fmt: skip
    @click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON object")
    @click.option("-q", "--quiet", is_flag=True, help="print only what was skipped")
    @click.option("--no-refit", is_flag=True,
                  help="never refit the svm model here (`learn upkeep` will)")  # fmt: skip
    @click.argument("paths", nargs=-1, required=True, metavar="PATH...")
    def command(
        config_file: str | None, user: str | None, as_json: bool, quiet: bool,
        no_refit: bool, paths: tuple[str, ...],
    ) -> None:  # fmt: skip
        _run(action, config_file, user, paths, as_json, quiet, no_refit)

    return command


learn.add_command(_command("spam", "Learn the messages in PATH... as spam."))
learn.add_command(_command("ham", "Learn the messages in PATH... as ham."))
learn.add_command(_command("forget", "Take back what was learned from PATH..."))


@learn.command()
@config_option
@click.option("--user", default=None, metavar="NAME",
              help="only this user's statistics (default: every scope that learned)")  # fmt: skip
def upkeep(config_file: str | None, user: str | None) -> None:
    """Recount the token hashes left after rare tokens expired, and refit
    the svm model if anything was learned since its fit: for the global
    statistics and, with per_user, every user's (the Dovecot loop learns
    with --no-refit, so this is where their models are refitted). Under
    another method, drop what svm kept."""
    _, settings = load_or_exit(config_file)
    bayes = settings.milters.spam.bayes
    store = _store(settings)
    lines = []
    try:
        bstore = BayesStore(store, bayes)
        if user is not None or not bayes.per_user:
            scopes = [scope_for(bayes, user)]
        else:
            scopes = bstore.scopes() or [GLOBAL_SCOPE]
        tokens = bstore.recount(scopes)
        for scope in scopes:
            line = f"{tokens[scope]} tokens (cap {bayes.max_tokens})"
            if bayes.method == CombineMethod.SVM:
                line += f"; {refit(bstore, scope, force=True).describe()}"
            lines.append(line if len(scopes) == 1 else f"{scope}: {line}")
        if bayes.method != CombineMethod.SVM:
            dropped = bstore.drop_svm_data()
            if dropped is not None:
                lines.append(f"method is {bayes.method}: dropped the svm models and "
                             f"{dropped} kept token lists")  # fmt: skip
    except StoreUnavailable as exc:
        click.echo("\n".join([*lines, f"postwarden learn: {exc}"]), err=True)
        sys.exit(EX_UNAVAILABLE)
    finally:
        store.close()
    click.echo("\n".join(lines))
