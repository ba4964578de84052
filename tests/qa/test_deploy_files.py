"""The files in deploy/ are real: systemd accepts the units, sysusers and
tmpfiles create what the services expect."""

from __future__ import annotations

import configparser
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.harness.services import postwarden_argv

DEPLOY = REPO / "deploy"
UNITS = ("postwarden.service", "postwarden@.service")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: apt-get install systemd")
    return path


def installed_units(tmp_path: Path) -> list[Path]:
    """The units as an admin installs them, with ExecStart pointing at this
    checkout's console script instead of /usr/local/bin (verify checks that
    the binary exists); template instantiated as postwarden@policyd."""
    script = REPO / ".venv" / "bin" / "postwarden"
    if not script.exists():
        pytest.fail(f"{script} is missing: run ./dev lint (creates the venv)")
    out = []
    for name in UNITS:
        text = (DEPLOY / "systemd" / name).read_text()
        assert "/usr/local/bin/postwarden" in text
        target = tmp_path / name.replace("@.", "@policyd.")
        target.write_text(text.replace("/usr/local/bin/postwarden", str(script)))
        out.append(target)
    return out


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    units = installed_units(tmp_path)
    done = subprocess.run(
        [tool("systemd-analyze"), "verify", *map(str, units)],
        capture_output=True,
        text=True,
        check=False,
    )
    # Unknown keys and bad values are only warnings: any output is a failure.
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / name)
    return parser


@pytest.mark.parametrize("name", UNITS)
def test_units_are_hardened_notify_services_reloaded_by_sighup(name: str) -> None:
    service = unit(name)["Service"]
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["RestartPreventExitStatus"] == "78"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter": "@system-service",
    }.items():
        assert service[key] == value, key
    caps = set(service["CapabilityBoundingSet"].split())
    # Bind in private/, hand sockets over, switch user; the supervisor also
    # signals its children (CAP_KILL). Nothing more.
    assert {"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_SETGID", "CAP_SETUID"} <= caps
    assert caps <= {"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_SETGID", "CAP_SETUID", "CAP_KILL"}
    writable = service["ReadWritePaths"].split()
    assert "-/var/spool/postfix/postwarden" in writable
    assert service["StateDirectory"] == "postwarden"


UPKEEP = ("postwarden-bayes-upkeep.service", "postwarden-bayes-upkeep.timer")


def test_the_bayes_upkeep_timer_runs_learn_upkeep_hourly_as_the_service_user(
    tmp_path: Path,
) -> None:
    script = REPO / ".venv" / "bin" / "postwarden"
    units = []
    for name in UPKEEP:
        text = (DEPLOY / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/usr/local/bin/postwarden", str(script)))
        units.append(str(tmp_path / name))
    done = subprocess.run([tool("systemd-analyze"), "verify", *units],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    service = unit(UPKEEP[0])["Service"]
    assert service["ExecStart"] == "/usr/local/bin/postwarden learn upkeep"
    assert (service["Type"], service["User"]) == ("oneshot", "postwarden")
    assert service["CapabilityBoundingSet"] == "" and service["NoNewPrivileges"] == "yes"
    assert unit(UPKEEP[1])["Timer"]["OnCalendar"] == "hourly"


def test_the_supervisor_unit_has_a_watchdog() -> None:
    assert unit("postwarden.service")["Service"]["WatchdogSec"] == "30s"


def image_with_users(tmp_path: Path) -> Path:
    """A root directory with this machine's passwd/group plus what
    deploy/sysusers.d adds (systemd-sysusers --root)."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group"):
        shutil.copy(f"/etc/{name}", root / "etc" / name)
    if b"postfix:" not in (root / "etc" / "group").read_bytes():
        pytest.fail("group postfix is missing: apt-get install postfix")
    done = subprocess.run(
        [tool("systemd-sysusers"), f"--root={root}", str(DEPLOY / "sysusers.d/postwarden.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return root


def entries(path: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.rstrip("\n").split(":") for line in path.open()}


def test_sysusers_creates_the_service_user_in_group_postfix(tmp_path: Path) -> None:
    root = image_with_users(tmp_path)
    users, groups = entries(root / "etc/passwd"), entries(root / "etc/group")
    user = users["postwarden"]
    assert user[5:] == ["/var/lib/postwarden", "/usr/sbin/nologin"]
    assert int(user[2]) < 1000  # a system user
    assert groups["postwarden"][2] == user[3]  # its own primary group
    assert "postwarden" in groups["postfix"][3].split(",")


def test_tmpfiles_creates_the_socket_and_state_directories(tmp_path: Path) -> None:
    root = image_with_users(tmp_path)
    for d in ("var/lib", "var/spool/postfix"):
        (root / d).mkdir(parents=True)
    done = subprocess.run(
        [
            tool("systemd-tmpfiles"),
            "--create",
            f"--root={root}",
            str(DEPLOY / "tmpfiles.d/postwarden.conf"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    user = entries(root / "etc/passwd")["postwarden"]
    uid, gid = int(user[2]), int(user[3])
    postfix = int(entries(root / "etc/group")["postfix"][2])

    def owner_mode(path: str) -> tuple[int, int, int]:
        st = (root / path).stat()
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    assert owner_mode("var/lib/postwarden") == (uid, gid, 0o750)
    assert owner_mode("var/spool/postfix/postwarden") == (uid, postfix, 0o750)
    assert owner_mode("etc/postwarden") == (0, gid, 0o750)


def test_contrib_main_cf_snippet_is_what_postfix_config_prints() -> None:
    snippet = (REPO / "contrib" / "postfix" / "main.cf.snippet").read_text()
    printed = subprocess.run(
        [*postwarden_argv(), "postfix-config", "-c", str(DEPLOY / "postwarden.yaml")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    body = snippet[snippet.index("# --- main.cf") :]
    assert body == printed, (
        "regenerate: postwarden postfix-config -c deploy/postwarden.yaml"
        " (below the header of contrib/postfix/main.cf.snippet)"
    )
