"""The attachments engine on files made in the test: classes, actions, limits."""

from __future__ import annotations

import email
import email.policy
import gzip
import hashlib
import io
import json
import random
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from milters.attachments import AttachmentsEngine
from milters.attachments.walk import Walker, WalkLimits, filename
from milters.context import MessageContext
from milters.message import Action, Envelope, HeaderOp, Message, Verdict
from postwarden import cli
from postwarden.config.load import load_config_text
from postwarden.config.schema import Settings
from postwarden.config.sections.attachments import AttachmentsMilterSettings
from tests.fixtures.attachments import (
    Attachment,
    docx,
    encrypted_zip,
    mime_message,
    minimal_elf,
    minimal_pe,
    nested_multipart,
    odt,
    ole_doc_with_macros,
    rar4,
    tar_gz,
    tnef,
    uuencoded,
    zip_of,
)

ENV = Envelope(mail_from="alice@example.org", recipients=("bob@example.net",), queue_id="4ABC")


def settings(**overrides: Any) -> AttachmentsMilterSettings:
    """Shipped defaults with YAML overrides under milters.attachments."""
    import yaml

    text = yaml.safe_dump({"milters": {"attachments": overrides}})
    return load_config_text(text).milters.attachments


def run(raw: bytes, s: AttachmentsMilterSettings | None = None, env: Envelope = ENV) -> Verdict:
    engine = AttachmentsEngine(s or Settings().milters.attachments)
    return engine.evaluate(Message.from_bytes(raw), env, MessageContext.offline())


def classes(v: Verdict) -> dict[str, list[str]]:
    files = v.details["files"]
    assert isinstance(files, list)
    return {f["name"] or f["path"]: f["classes"] for f in files}


def found(v: Verdict) -> set[str]:
    items = v.details["findings"]
    assert isinstance(items, list)
    return {f["class"] for f in items}


def one(name: str, data: bytes, **kw: Any) -> bytes:
    return mime_message([Attachment(name, data, **kw)])


# -- executables by content, whatever the name ---------------------------------


def test_exe_renamed_report_pdf_is_rejected_naming_the_file_and_class() -> None:
    v = run(one("report.pdf", minimal_pe(), ctype="application/pdf"))
    assert v.action is Action.REJECT
    assert v.reply is not None and (v.reply.code, v.reply.enhanced) == (550, "5.7.1")
    assert v.reply.text == 'Attachment "report.pdf" refused: executables'
    assert "type_mismatch" in classes(v)["report.pdf"]


def test_elf_without_extension_is_an_executable() -> None:
    v = run(one("tool", minimal_elf()))
    assert v.action is Action.REJECT
    assert classes(v)["tool"] == ["executables"]


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\xcf\xfa\xed\xfe\x07\x00\x00\x01" + b"\x00" * 64, "macho"),
        (b"\xca\xfe\xba\xbe\x00\x00\x00\x34" + b"\x00" * 64, "java-class"),
        (b"dex\n035\x00" + b"\x00" * 64, "dex"),
        (b"L\x00\x00\x00\x01\x14\x02\x00" + b"\x00" * 64, "lnk"),
        (
            zip_of({"META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\n", "a/B.class": b"\xca\xfe"}),
            "jar",
        ),
        (zip_of({"AndroidManifest.xml": b"\x03\x00", "classes.dex": b"dex\n035\x00"}), "apk"),
    ],
)
def test_other_programs_are_executables_by_content(data: bytes, kind: str) -> None:
    v = run(one("harmless.dat", data))
    assert v.action is Action.REJECT
    assert "executables" in classes(v)["harmless.dat"]
    assert kind in str(v.details["findings"])


def test_script_without_magic_is_an_executable_by_extension() -> None:
    v = run(one("invoice.js", b"var x = new ActiveXObject('WScript.Shell');\r\n"))
    assert v.action is Action.REJECT
    assert "invoice.js" in v.reply.text  # type: ignore[union-attr]


def test_double_extension_pdf_exe_is_both_classes() -> None:
    v = run(one("invoice.pdf.exe", b"not really a program"))
    assert v.action is Action.REJECT
    assert set(classes(v)["invoice.pdf.exe"]) >= {"executables", "double_extensions"}


def test_rlo_name_is_a_double_extension_trick_and_shown_escaped() -> None:
    name = "photo\u202egpj.txt"  # shows as "phototxt.jpg"
    s = settings(classes={"double_extensions": "quarantine"})
    v = run(one(name, b"plain words\r\n", ctype="text/plain"), s)
    assert v.action is Action.QUARANTINE
    assert "double_extensions" in classes(v)[name]
    [header] = [e for e in v.header_edits if e.name == "X-Postwarden-Attachments"]
    assert "\\u202e" in header.value and "\u202e" not in header.value


def test_padded_name_is_a_double_extension_trick() -> None:
    v = run(
        one("invoice.pdf          .txt", b"words"), settings(classes={"double_extensions": "warn"})
    )
    assert v.action is Action.ADD_HEADER
    assert "double_extensions" in classes(v)["invoice.pdf          .txt"]


# -- archives ------------------------------------------------------------------


def test_exe_inside_a_zip_is_rejected() -> None:
    v = run(one("docs.zip", zip_of({"setup.exe": minimal_pe(), "readme.txt": b"hi"})))
    assert v.action is Action.REJECT
    assert v.reply is not None and "setup.exe" in v.reply.text
    files = {f["name"]: f for f in v.details["files"]}  # type: ignore[attr-defined]
    assert files["setup.exe"]["inside"] == "docs.zip"
    assert files["docs.zip"]["classes"] == ["archives"]


def test_exe_inside_a_zip_inside_a_zip_is_found() -> None:
    inner = zip_of({"payload.exe": minimal_pe()})
    v = run(one("outer.zip", zip_of({"inner.zip": inner})))
    assert v.action is Action.REJECT
    assert v.reply is not None and "payload.exe" in v.reply.text


def test_zip_of_pdfs_passes_when_only_executables_are_blocked() -> None:
    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    v = run(one("papers.zip", zip_of({"a.pdf": pdf, "b.pdf": pdf})))
    assert v.action is Action.ACCEPT
    assert v.header_edits == ()
    assert classes(v)["a.pdf"] == []


def test_exe_inside_tar_gz_and_in_plain_gzip_is_found() -> None:
    assert run(one("bundle.tgz", tar_gz({"bin/run.exe": minimal_pe()}))).action is Action.REJECT
    assert run(one("run.exe.gz", gzip.compress(minimal_pe()))).action is Action.REJECT


def test_encrypted_zip_is_its_own_class_and_not_decrypted() -> None:
    data = encrypted_zip({"scan.pdf": b"%PDF-1.4 secret"})
    assert run(one("scan.zip", data)).action is Action.ACCEPT
    v = run(one("scan.zip", data), settings(classes={"encrypted_archives": "reject"}))
    assert v.action is Action.REJECT
    assert (
        v.reply is not None and v.reply.text == 'Attachment "scan.zip" refused: encrypted_archives'
    )


def test_not_looking_into_archives_misses_the_inner_exe() -> None:
    data = zip_of({"setup.exe": minimal_pe()})
    v = run(one("docs.zip", data), settings(look_into_archives=False))
    assert v.action is Action.ACCEPT


def test_stored_exe_in_a_rar_is_read_and_rejected() -> None:
    v = run(one("photos.rar", rar4({"holiday.jpg": minimal_pe()})))
    assert v.action is Action.REJECT
    assert v.reply is not None and "holiday.jpg" in v.reply.text


def test_compressed_rar_member_is_judged_by_name_and_the_rar_is_opaque() -> None:
    data = rar4({"invoice.pdf.exe": b"\x00" * 64, "note.txt": b"\x01" * 8}, method=0x33)
    v = run(one("invoice.rar", data))
    assert v.action is Action.REJECT
    assert v.reply is not None and "invoice.pdf.exe" in v.reply.text
    assert set(classes(v)["invoice.rar"]) == {"archives", "opaque_archives"}
    assert classes(v)["note.txt"] == []


def test_encrypted_rar_is_an_encrypted_archive() -> None:
    data = rar4({"scan.pdf": b"%PDF-1.4"}, encrypted=True)
    v = run(one("scan.rar", data), settings(classes={"encrypted_archives": "quarantine"}))
    assert v.action is Action.QUARANTINE
    assert "encrypted_archives" in classes(v)["scan.rar"]


def test_exe_inside_winmail_dat_is_found() -> None:
    data = tnef({"notes.txt": b"hello", "tool.exe": minimal_pe()})
    v = run(one("winmail.dat", data, ctype="application/ms-tnef"))
    assert v.action is Action.REJECT
    assert v.reply is not None and "tool.exe" in v.reply.text
    files = {f["name"]: f for f in v.details["files"]}  # type: ignore[attr-defined]
    assert files["winmail.dat"]["type"] == "application/vnd.ms-tnef"
    assert files["notes.txt"]["inside"] == "winmail.dat"


# -- documents -----------------------------------------------------------------


def test_docx_without_macros_is_a_document_not_an_archive() -> None:
    v = run(one("letter.docx", docx()))
    assert v.action is Action.ACCEPT
    assert classes(v)["letter.docx"] == ["office_documents"]


def test_docm_is_a_macro_document() -> None:
    v = run(one("sheet.docm", docx(macros=True)), settings(classes={"macro_documents": "reject"}))
    assert v.action is Action.REJECT
    assert "macro_documents" in v.reply.text  # type: ignore[union-attr]


def test_docx_that_is_really_a_docm_is_a_macro_document() -> None:
    v = run(one("letter.docx", docx(macros=True)))
    assert v.action is Action.ACCEPT  # shipped default: documents pass
    assert "macro_documents" in classes(v)["letter.docx"]


def test_ole_document_with_vba_is_a_macro_document() -> None:
    v = run(one("old.doc", ole_doc_with_macros()), settings(classes={"macro_documents": "warn"}))
    assert v.action is Action.ADD_HEADER
    assert "macro_documents" in classes(v)["old.doc"]


def test_odt_is_a_document_not_an_archive() -> None:
    v = run(one("notes.odt", odt()))
    assert classes(v)["notes.odt"] == ["office_documents"]


def test_blocking_office_documents_is_the_admins_choice() -> None:
    v = run(one("letter.docx", docx()), settings(classes={"office_documents": "reject"}))
    assert v.action is Action.REJECT


# -- names ---------------------------------------------------------------------


def test_rfc2231_continued_name_with_charset_is_decoded() -> None:
    name = "r\u00e9sum\u00e9 f\u00fcr Herrn M\u00fcller.exe"
    v = run(one(name, minimal_pe(), name_style="rfc2231"))
    assert v.action is Action.REJECT
    assert name in classes(v)
    assert "r\\u00e9sum\\u00e9" in v.reply.text  # type: ignore[union-attr]


def test_rfc2047_encoded_name_is_decoded() -> None:
    name = "\u041e\u0442\u0447\u0451\u0442.pdf.exe"
    v = run(one(name, minimal_pe(), name_style="rfc2047"))
    assert name in classes(v)
    assert "double_extensions" in classes(v)[name]


def test_filename_falls_back_to_content_type_name() -> None:
    msg = email.message_from_bytes(b'Content-Type: application/x-foo; name="a.bin"\r\n\r\n')
    assert filename(msg) == "a.bin"


def test_uuencoded_exe_in_a_text_body_is_found() -> None:
    raw = (
        b"From: a@example.org\r\nTo: b@example.net\r\nSubject: uu\r\n\r\n"
        b"Here it is:\r\n\r\n" + uuencoded("tool.exe", minimal_pe()) + b"\r\nbye\r\n"
    )
    v = run(raw)
    assert v.action is Action.REJECT
    assert "tool.exe" in v.reply.text  # type: ignore[union-attr]


# -- actions -------------------------------------------------------------------


def test_strip_replaces_only_the_part_and_keeps_valid_mime() -> None:
    raw = mime_message(
        [Attachment("setup.exe", minimal_pe()), Attachment("notes.txt", b"keep me", "text/plain")]
    )
    v = run(raw, settings(classes={"executables": "strip"}))
    assert v.action is Action.ADD_HEADER
    assert v.new_body is not None
    rebuilt = Message.from_bytes(raw)
    rebuilt = Message(rebuilt.headers, v.new_body)
    parsed = email.message_from_bytes(rebuilt.as_bytes(), policy=email.policy.default)
    assert not parsed.defects
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/plain", "text/plain"]
    assert 'removed the attachment "setup.exe"' in parts[1].get_content()
    assert parts[2].get_filename() == "notes.txt" and parts[2].get_content() == "keep me"
    assert "MZ" not in v.new_body.decode("latin-1")
    # The stripped message is clean on a second look.
    assert run(rebuilt.as_bytes()).action is Action.ACCEPT


def test_strip_of_a_single_part_message_rewrites_its_content_headers() -> None:
    raw = (
        b"From: a@example.org\r\nTo: b@example.net\r\nSubject: bare\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: application/octet-stream; name="x.exe"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="x.exe"\r\n\r\n'
        + __import__("base64").encodebytes(minimal_pe())
    )
    v = run(raw, settings(classes={"executables": "strip"}))
    ops = {(e.op, e.name): e.value for e in v.header_edits}
    assert ops[(HeaderOp.CHANGE, "Content-Type")].startswith("text/plain")
    assert (HeaderOp.DELETE, "Content-Disposition") in ops
    assert v.new_body is not None and b"removed the attachment" in v.new_body


def test_strip_of_a_uuencoded_block_keeps_the_surrounding_text() -> None:
    raw = (
        b"From: a@example.org\r\nTo: b@example.net\r\nSubject: uu\r\n\r\n"
        b"before\r\n" + uuencoded("tool.exe", minimal_pe()) + b"after\r\n"
    )
    v = run(raw, settings(classes={"executables": "strip"}))
    assert v.new_body is not None
    assert v.new_body.startswith(b"before\r\n[postwarden removed")
    assert v.new_body.endswith(b"]\r\nafter\r\n")


def test_strip_of_a_cut_body_quarantines_instead() -> None:
    raw = one("setup.exe", minimal_pe())
    msg = Message.from_bytes(raw, max_body_size=len(raw) - 200)
    engine = AttachmentsEngine(settings(classes={"executables": "strip"}))
    v = engine.evaluate(msg, ENV, MessageContext.offline())
    assert v.action is Action.QUARANTINE


def test_warn_only_adds_the_findings_header() -> None:
    v = run(one("setup.exe", minimal_pe()), settings(classes={"executables": "warn"}))
    assert v.action is Action.ADD_HEADER and v.new_body is None and v.reply is None
    [edit] = v.header_edits
    assert edit.name == "X-Postwarden-Attachments"
    assert '"setup.exe"' in edit.value and "executables=warn" in edit.value


def test_clean_message_gets_no_header() -> None:
    v = run(mime_message([]))
    assert v.is_noop


# -- allow-lists ---------------------------------------------------------------


def test_allow_listed_sender_and_recipient_domain_win() -> None:
    raw = one("setup.exe", minimal_pe())
    assert run(raw, settings(allow={"senders": ["@example.org"]})).action is Action.ACCEPT
    assert run(raw, settings(allow={"recipient_domains": ["example.net"]})).action is Action.ACCEPT
    mixed = replace(ENV, recipients=("bob@example.net", "eve@elsewhere.test"))
    s = settings(allow={"recipient_domains": ["example.net"]})
    assert run(raw, s, mixed).action is Action.REJECT


def test_allow_listed_file_hash_wins() -> None:
    pe = minimal_pe()
    s = settings(allow={"sha256": [hashlib.sha256(pe).hexdigest()]})
    assert run(one("setup.exe", pe), s).action is Action.ACCEPT


def test_a_bad_hash_in_the_allow_list_is_a_config_error() -> None:
    with pytest.raises(Exception, match="sha256"):
        settings(allow={"sha256": ["nothex"]})


# -- limits: a verdict, never a crash ------------------------------------------


def test_thousand_level_nested_multipart_is_a_limit_verdict() -> None:
    v = run(nested_multipart(1000))
    assert v.action is Action.QUARANTINE
    assert "max_depth" in found(v)


def test_nesting_within_the_limit_finds_the_exe() -> None:
    assert run(nested_multipart(10)).action is Action.REJECT


def test_zip_bomb_member_is_not_inflated() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("zeros.bin", b"\x00" * (16 * 1024 * 1024))
    v = run(one("bomb.zip", buf.getvalue()))
    assert v.action is Action.QUARANTINE
    found_classes = found(v)
    assert "max_expansion_ratio" in found_classes


def test_42_zip_style_tower_stops_at_archive_depth() -> None:
    layer = zip_of({"0.txt": b"x" * 1000})
    for level in range(6):
        layer = zip_of({f"{level}-{i}.zip": layer for i in range(4)})
    v = run(one("42.zip", layer))
    assert v.action is Action.QUARANTINE
    found_classes = found(v)
    assert found_classes & {"archive_depth", "max_parts"}


def test_a_30mb_part_is_cut_at_max_decoded_size() -> None:
    big = b"%PDF-1.4\n" + b"A" * (30 * 1024 * 1024)
    v = run(one("big.pdf", big, ctype="application/pdf"))
    assert v.action is Action.QUARANTINE
    assert "max_decoded_size" in found(v)


def test_too_many_parts_is_a_limit_verdict() -> None:
    raw = mime_message([Attachment(f"{i}.txt", b"x", "text/plain") for i in range(30)])
    v = run(raw, settings(limits={"max_parts": 10, "action": "reject"}))
    assert v.action is Action.REJECT
    assert v.reply is not None and "max_parts" in v.reply.text


def test_walker_never_holds_more_than_the_total_allowance() -> None:
    body = mime_message([Attachment(f"{i}.bin", b"\x01" * 4096) for i in range(8)])
    msg = Message.from_bytes(body)
    walker = Walker(WalkLimits(max_total_size=10000))
    parts = list(walker.walk(msg.header_bytes(), msg.body))
    assert sum(len(p.data) for p in parts) <= 10000
    assert any(h.limit == "max_total_size" for h in walker.limit_hits)


def test_broken_base64_and_garbage_never_raise() -> None:
    raw = (
        b"From: a@example.org\r\nSubject: junk\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n--x\r\n'
        b'Content-Type: application/zip; name="a.zip"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        b"UEsDBA!!!not*base64=\r\n--x\r\nContent-Type: message/rfc822\r\n\r\n"
        b"Content-Type: multipart/mixed\r\n\r\nno boundary at all\r\n--x"
    )
    v = run(raw)
    assert v.action in (Action.ACCEPT, Action.ADD_HEADER)


# -- what the operator sees ------------------------------------------------------


def test_one_decision_log_line_names_queue_files_types_and_classes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = mime_message([Attachment("setup.exe", minimal_pe()), Attachment("a.zip", zip_of({}))])
    run(raw)
    lines = [r.getMessage() for r in caplog.records if r.name == "postwarden.milter.attachments"]
    assert len(lines) == 1
    [line] = lines
    assert line.startswith("decision service=attachments queue=4ABC action=reject")
    assert "files=setup.exe,a.zip" in line
    assert "application/vnd.microsoft.portable-executable" in line
    assert "classes=executables" in line


def test_scan_json_shows_the_verdict_header_and_files(tmp_path: Path) -> None:
    message = tmp_path / "exe.eml"
    message.write_bytes(one("setup.exe", minimal_pe()))
    config = tmp_path / "postwarden.yaml"
    config.write_text(
        "milters:\n  headers: {enabled: false}\n  dkim: {enabled: false}\n"
        "  spam: {enabled: false}\n"
    )
    result = CliRunner().invoke(cli.main, ["scan", "--json", "-c", str(config), str(message)])
    out = json.loads(result.output)
    verdict = out["milters"]["attachments"]
    assert out["action"] == "reject"
    assert verdict["reply"] == '550 5.7.1 Attachment "setup.exe" refused: executables'
    assert verdict["headers"] == [
        {
            "op": "add",
            "name": "X-Postwarden-Attachments",
            "value": '"setup.exe" application/vnd.microsoft.portable-executable executables=reject',
        }
    ]
    assert verdict["files"][0]["kind"] == "pe"


def test_mutated_messages_never_raise() -> None:
    # Seeded byte mutations of structured messages (boundaries, archives,
    # encoded names, uuencode): every one gets a verdict.
    seeds = [
        mime_message([Attachment("a.zip", zip_of({"x.exe": minimal_pe(), "d.docx": docx()}))]),
        mime_message(
            [Attachment("b.tgz", tar_gz({"y.exe": minimal_pe()})), Attachment("c.odt", odt())]
        ),
        mime_message(
            [Attachment("r\u00e9.exe", minimal_elf(), name_style="rfc2231")],
            text="x\r\n" + uuencoded("u.exe", minimal_pe()).decode(),
        ),
        nested_multipart(30),
        mime_message([Attachment("e.zip", encrypted_zip({"a": b"b"}))]),
    ]
    inserts = [b"\r\n", b"--", b"=?utf-8?B?", b"begin 644 x\r\n", b"PK\x03\x04", b"\r\n\r\n", b'"']
    rng = random.Random(12)
    engine = AttachmentsEngine(Settings().milters.attachments)
    for _ in range(500):
        raw = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(raw))
            op = rng.random()
            if op < 0.4:
                raw[pos] = rng.randrange(256)
            elif op < 0.6:
                del raw[pos : pos + rng.randint(1, 50)]
            elif op < 0.8:
                raw[pos:pos] = raw[rng.randrange(len(raw)) :][: rng.randint(1, 100)]
            else:
                raw[pos:pos] = rng.choice(inserts)
        verdict = engine.evaluate(Message.from_bytes(bytes(raw)), ENV, MessageContext.offline())
        assert isinstance(verdict.action, Action)


def test_multipart_without_its_delimiter_is_still_examined() -> None:
    # Some clients show a body whose boundary never appears; it is not skipped.
    raw = (
        b"From: a@example.org\r\nSubject: odd\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="never"\r\n\r\n'
        b'Content-Type: application/octet-stream; name="x.exe"\r\n\r\n' + minimal_pe()
    )
    v = run(raw)
    assert v.action is Action.REJECT
    assert v.reply is not None and "x.exe" in v.reply.text


def test_only_the_configured_actions_are_negotiated_with_postfix() -> None:
    shipped = AttachmentsEngine(Settings().milters.attachments).needs
    assert (shipped.change_body, shipped.change_headers, shipped.quarantine) == (False, False, True)
    stripping = AttachmentsEngine(settings(classes={"macro_documents": "strip"})).needs
    assert stripping.change_body and stripping.change_headers and stripping.quarantine
    rejecting = AttachmentsEngine(settings(limits={"action": "reject"})).needs
    assert not (rejecting.change_body or rejecting.quarantine)
