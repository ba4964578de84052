"""The container files: Docker cannot run on the CI machines, so the
Dockerfile's install steps run here in a fresh venv (wheels built, installed
offline, `postwarden` started), and the rest is checked for what the image
promises (Debian slim, non-root, health check, compose wiring)."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from postwarden import __version__
from postwarden.config import load_config
from tests.conftest import REPO

CONTAINER = REPO / "deploy" / "container"
DOCKERFILE = CONTAINER / "Dockerfile"


def instructions(path: Path) -> list[tuple[str, str, str]]:
    """(comment above, instruction, arguments) with continuations joined."""
    out: list[tuple[str, str, str]] = []
    comment = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and line.startswith("#"):
            comment += line[1:].strip() + " "
            continue
        if not line and not pending:
            comment = ""
            continue
        pending += raw.rstrip("\\").strip() + " " if raw.endswith("\\") else raw.strip()
        if raw.endswith("\\"):
            continue
        word, _, args = pending.partition(" ")
        out.append((comment.strip(), word.upper(), args.strip()))
        comment, pending = "", ""
    return out


def install_steps() -> list[str]:
    steps = [args for c, w, args in instructions(DOCKERFILE) if w == "RUN" and "install step" in c]
    assert len(steps) == 2, "the build stage's wheel step and the runtime stage's install step"
    return steps


def docker_context_copy(dest: Path) -> None:
    """COPY . /src as Docker does it: the tree minus .dockerignore."""
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip()]

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = os.path.relpath(directory, REPO)
        out = set()
        for name in names:
            path = os.path.normpath(os.path.join(rel, name))
            for p in patterns:
                if fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p.removeprefix("**/")):
                    out.add(name)
        return out

    shutil.copytree(REPO, dest, ignore=ignore)


def test_dockerfile_install_steps_build_wheels_and_install_a_working_postwarden(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    docker_context_copy(src)
    assert not (src / ".venv").exists()
    paths = {
        "/src": str(src),
        "/build": str(tmp_path / "build"),
        "/wheels": str(tmp_path / "wheels"),
        "/opt/postwarden": str(tmp_path / "opt"),
    }
    python = shutil.which("python3") or sys.executable
    for step in install_steps():
        for image_path, here in paths.items():
            step = re.sub(rf"(?<![\w/]){re.escape(image_path)}(?![\w-])", here, step)
        step = re.sub(r"(?<![\w/])python3 ", f"{python} ", step)
        done = subprocess.run(
            ["sh", "-e", "-c", step], capture_output=True, text=True, cwd=tmp_path, check=False
        )
        assert done.returncode == 0, f"{step}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    wheels = sorted(p.name for p in (tmp_path / "wheels").iterdir())
    assert any(re.fullmatch(rf"postwarden-{re.escape(__version__)}-.*\.whl", w) for w in wheels)
    postwarden = tmp_path / "opt" / "bin" / "postwarden"
    out = subprocess.run(
        [str(postwarden), "--version"], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == f"postwarden, version {__version__}"
    # The installed package carries its data files and runs the image's config.
    cfg = str(CONTAINER / "postwarden.yaml")
    check = subprocess.run(
        [str(postwarden), "config", "check", "-c", cfg],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    lines = subprocess.run(
        [str(postwarden), "postfix-config", "--no-chroot", "-c", cfg],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout
    assert "smtpd_milters = inet:127.0.0.1:9901" in lines
    assert "check_policy_service { inet:127.0.0.1:10040" in lines


def test_image_is_debian_slim_non_root_and_health_checked() -> None:
    steps = instructions(DOCKERFILE)
    bases = [args.split()[0] for _, w, args in steps if w == "FROM"]
    assert bases and all(re.fullmatch(r"debian:[a-z]+-slim", b) for b in bases)
    users = [args for _, w, args in steps if w == "USER"]
    assert users == ["postwarden"]
    health = [args for _, w, args in steps if w == "HEALTHCHECK"]
    assert len(health) == 1
    # The health check probes the port the image's config gives policyd.
    settings = load_config(CONTAINER / "postwarden.yaml")
    assert settings.policyd.socket.kind == "inet"
    assert f"'127.0.0.1', {settings.policyd.socket.port})" in health[0]
    # Non-root in the image means the config must not demand a user switch.
    assert settings.privileges.user is None
    assert not settings.privileges.allow_root
    runtime_apt = [args for _, w, args in steps if w == "RUN" and "libmagic1" in args]
    assert runtime_apt, "the runtime stage installs the system libraries"
    for package in ("libmilter1.0.1", "libmagic1", "redis-server"):
        assert package in runtime_apt[0]


def test_compose_runs_redis_postwarden_and_postfix_sharing_loopback() -> None:
    compose = yaml.safe_load((CONTAINER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "postwarden", "postfix"}
    assert services["postfix"]["network_mode"] == "service:postwarden"
    assert services["postwarden"]["build"]["dockerfile"] == "deploy/container/Dockerfile"
    assert (CONTAINER / services["postfix"]["build"]["dockerfile"]).exists()
    settings = load_config(CONTAINER / "postwarden.yaml")
    assert settings.redis.url == "redis://redis:6379/0"
    for name, m in settings.milters.by_name().items():
        assert m.socket.kind == "inet" and m.socket.host == "127.0.0.1", name


@pytest.mark.parametrize("name", [".venv", "postwarden/__pycache__", ".git"])
def test_docker_context_leaves_out_local_state(name: str, tmp_path: Path) -> None:
    patterns = (REPO / ".dockerignore").read_text().split()
    assert any(
        fnmatch.fnmatch(name, p) or fnmatch.fnmatch(name.split("/")[-1], p.removeprefix("**/"))
        for p in patterns
    )
