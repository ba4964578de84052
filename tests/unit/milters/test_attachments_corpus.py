"""All 3,250 messages of the shared corpus through `postwarden scan --json`
with only the attachments milter: no exception, no timeout, and the files
found listed with their detected types (run with -s to see the list)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.fixtures import corpus

REPO = Path(__file__).resolve().parents[3]
unpack_corpus = corpus.unpack


def attachments_only_config(path: Path) -> Path:
    others = ("headers", "dkim", "spam", "noop")
    data = {"milters": {name: {"enabled": False} for name in others}}
    data["milters"]["attachments"] = {"enabled": True}
    data["state_dir"] = str(path.parent / "state")  # type: ignore[assignment]
    path.write_text(yaml.safe_dump(data))
    return path


def describe(f: dict[str, object]) -> str:
    """`name (detected/type; classes)` for the listing."""
    classes = f["classes"]
    assert isinstance(classes, list)
    extra = f"; {','.join(classes)}" if classes else ""
    return f"{f['name'] or f['path']} ({f['type']}{extra})"


def test_whole_corpus_scans_without_an_exception(tmp_path: Path) -> None:
    files = unpack_corpus(tmp_path / "corpus")
    assert len(files) == 3250
    config = attachments_only_config(tmp_path / "postwarden.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "postwarden", "scan", "--json", "-c", str(config)]
        + [str(f) for f in files],
        capture_output=True,
        cwd=REPO,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    results = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert len(results) == len(files)
    failed = [
        (r["file"], r["milters"]["attachments"].get("reason"))
        for r in results
        if r["milters"]["attachments"].get("outcome")
    ]
    assert failed == []
    assert b"Traceback" not in proc.stderr
    with_files = [r for r in results if r["milters"]["attachments"].get("files")]
    print(f"\n{len(with_files)} of {len(results)} messages carry files:")
    for r in with_files:
        verdict = r["milters"]["attachments"]
        listed = ", ".join(describe(f) for f in verdict["files"])
        print(f"  {Path(r['file']).name}: {verdict['action']}: {listed}")
    # The 2002 corpus does carry attachments (images, zips, a few programs).
    assert with_files
