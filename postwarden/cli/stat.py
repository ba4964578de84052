"""`postwarden stat`: counters kept in Redis, like `rspamc stat`."""

from __future__ import annotations

import json
import sys
import time

import click

from postwarden.bayes.store import GLOBAL_SCOPE, BayesStore
from postwarden.cli.options import EX_UNAVAILABLE, config_option, load_or_exit
from postwarden.config.sections.bayes import CombineMethod
from postwarden.errors import StoreUnavailable
from postwarden.stats import milter_action_shares
from postwarden.store.client import open_configured_store, unavailable_on_error
from postwarden.supervisor import read_status


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def stat(config_file: str | None, as_json: bool) -> None:
    """Show counters: scanned, by action, learned, greylisted, rate-limited."""
    _, settings = load_or_exit(config_file)
    supervised = supervisor_counters(settings.state_dir)
    if not as_json:
        for line in supervisor_lines(settings.state_dir):
            click.echo(line)
    store = open_configured_store(settings)
    prefix = store.keys.stat("")
    try:
        with unavailable_on_error():
            keys = sorted(store.redis.scan_iter(match=store.keys.stat_pattern(), count=1000))
            values = store.redis.mget(keys) if keys else []
        bayes_settings = settings.milters.spam.bayes
        bstore = BayesStore(store, bayes_settings)
        bayes = bstore.state(GLOBAL_SCOPE)
        model = bstore.model_info(GLOBAL_SCOPE)
        stale = model is not None and model.changes != bstore.changes(GLOBAL_SCOPE)
        users = user_scopes(bstore) if bayes_settings.per_user else None
    except StoreUnavailable as exc:
        click.echo(f"postwarden stat: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)
    counters = {
        k.decode()[len(prefix) :]: int(v)
        for k, v in zip(keys, values, strict=True)
        if v is not None
    }
    need = bayes_settings.min_learns
    active = bayes.spam >= need and bayes.ham >= need
    if as_json:
        counters.update(supervised)
        counters["bayes_learned_spam"] = bayes.spam
        counters["bayes_learned_ham"] = bayes.ham
        counters["bayes_tokens"] = bayes.tokens
        counters["bayes_active"] = int(active and bayes_settings.enabled)
        if model is not None:
            counters["bayes_model_messages"] = model.messages
            counters["bayes_model_fitted_at"] = int(model.fitted_at)
            counters["bayes_model_stale"] = int(stale)
        if users is not None:
            counters.update({f"bayes_users_{k}": v for k, v in users.items()})
        click.echo(json.dumps(counters, sort_keys=True))
        return
    if not counters:
        click.echo("no counters yet")
    width = max((len(k) for k in counters), default=0)
    for name, value in counters.items():
        click.echo(f"{name:<{width}}  {value}")
    for milter, rows in milter_action_shares(counters).items():
        click.echo(f"\nmilter {milter}: {counters[f'milter.{milter}.scanned']} messages scanned")
        for action, n, share in rows:
            click.echo(f"  Messages with action {action}: {n}, {share:.2%}")
    if not bayes_settings.enabled:
        state = "disabled in the config"
    elif active:
        state = "active"
    else:
        state = (f"inactive: learning {min(bayes.spam, need)}/{need} spam, "
                 f"{min(bayes.ham, need)}/{need} ham")  # fmt: skip
    auto = bayes_settings.autolearn
    if bayes_settings.enabled and auto.enabled:
        state += f"; autolearn on (spam at {auto.spam_score:g}, ham at {auto.ham_score:g})"
    elif bayes_settings.enabled:
        state += "; autolearn off"
    if bayes_settings.enabled and bayes_settings.method == CombineMethod.SVM:
        if model is None:
            state += "; svm model not fitted yet (chi2 judges)"
        else:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(model.fitted_at))
            state += f"; svm model fitted {when} from {model.messages} messages"
            if stale:
                state += ", learned more since (refitted by the next learn or learn upkeep)"
    click.echo(f"bayes (global): learned {bayes.spam} spam, {bayes.ham} ham, "
               f"{bayes.tokens} tokens; {state}")  # fmt: skip
    if users is not None:
        line = (f"bayes per user: {users['learned']} users learned, {users['active']} active "
                f"({need} spam and {need} ham each)")  # fmt: skip
        if bayes_settings.global_fallback:
            line += ", the others judged by the global set"
        if bayes_settings.method == CombineMethod.SVM:
            line += (f"; svm models for {users['models']}, {users['models_stale']} "
                     "learned more since (refitted by learn upkeep)")  # fmt: skip
        click.echo(line)


def user_scopes(bstore: BayesStore) -> dict[str, int]:
    """With per_user: how many users' statistics exist, how many are active
    (min_learns spam and ham each), and with svm how many models are
    fitted and how many lag behind what their user learned since."""
    need = bstore.settings.min_learns
    out = {"learned": 0, "active": 0, "models": 0, "models_stale": 0}
    for scope in bstore.scopes():
        if scope == GLOBAL_SCOPE:
            continue
        state = bstore.state(scope)
        out["learned"] += 1
        out["active"] += int(state.spam >= need and state.ham >= need)
        model = bstore.model_info(scope)
        if model is not None:
            out["models"] += 1
            out["models_stale"] += int(model.changes != bstore.changes(scope))
    return out


def supervisor_counters(state_dir: str) -> dict[str, int]:
    """`supervisor.restarts.SERVICE` for the running `postwarden run`, if any."""
    status = read_status(state_dir)
    if status is None:
        return {}
    return {
        f"supervisor.restarts.{name.split()[-1]}": int(info.get("restarts", 0))
        for name, info in status.get("services", {}).items()
    }


def supervisor_lines(state_dir: str) -> list[str]:
    """What `postwarden run` supervises, with restarts; shown even when Redis
    is down (that is when it matters)."""
    status = read_status(state_dir)
    if status is None:
        return [f"supervisor: not running for {state_dir}"]
    lines = [f"supervisor: pid {status['pid']}, running {status.get('running_config', '?')}"]
    for name, info in status.get("services", {}).items():
        pid = info.get("pid")
        state = f"pid {pid}" if pid else "down, restarting"
        lines.append(f"  {name:<20} {state:<18} restarts {info.get('restarts', 0)}")
    return lines
