"""Unit labels (harness/production/labels.py): the ZPL a Zebra printer gets, its escaping, the
raw-TCP hand-off, the PNG/PDF previews and the station file's ``labels`` section."""

from __future__ import annotations

import dataclasses
import io
import re
import socket
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import segno
from PIL import Image, features
from pydantic import ValidationError

from bankmodel.files import FileError, load_yaml, validate
from harness.config import FileModel
from harness.production import labels
from harness.production.labels import (LabelNotPrinted, LabelSection, LabelSink, layout,
                                       parse_printer, preview_pdf, preview_png, render_image,
                                       render_zpl, zpl_escape)
from harness.production.unit import UnitResult

RUN_UUID = "2b1c7e3a-5d4f-4e2a-9c1b-0f6e8d7a5b43"


def unit(**changes: object) -> UnitResult:
    base = UnitResult(
        serial="BH12-2026-000042", verdict="PASS", attempt=1, attempts_allowed=3,
        run_uuid=RUN_UUID, station="eol-1", socket="A", operator="j.doe",
        plan="eol_module", plan_version="1.4", firmware="2.3.1",
        started_at=datetime(2026, 11, 30, 14, 1, 0, tzinfo=timezone.utc),
        finished_at=datetime(2026, 11, 30, 15, 3, 12, tzinfo=timezone(timedelta(hours=1))),
        takt_s=132.0)
    return dataclasses.replace(base, **changes)


PASS_ZPL = """\
^XA
^CI28
^PW800
^LL400
^LH0,0
^FO20,20^A0N,58,58^FH^FDBH12-2026-000042^FS
^FO20,91^GB558,71,4^FS
^FO25,96^A0N,61,61^FH^FDPASS^FS
^FO20,172^A0N,30,30^FH^FD2026-11-30T14:03:12Z^FS
^FO20,212^A0N,30,30^FH^FDPlan eol_5Fmodule v1.4^FS
^FO20,252^A0N,27,27^FH^FDStation eol-1 socket A attempt 1/3^FS
^FO602,24^BQN,2,6^FDMA,2b1c7e3a-5d4f-4e2a-9c1b-0f6e8d7a5b43^FS
^FO602,210^A0N,22,22^FH^FD2b1c7e3a^FS
^XZ
"""

FAIL_ZPL = """\
^XA
^CI28
^PW800
^LL400
^LH0,0
^FO20,20^A0N,58,58^FH^FDBH12-2026-000042^FS
^FO20,91^GB558,71,71^FS
^FO25,96^A0N,61,61^FR^FH^FDFAIL^FS
^FO20,172^A0N,30,30^FH^FD2026-11-30T14:03:12Z^FS
^FO20,212^A0N,30,30^FH^FDPlan eol_5Fmodule v1.4^FS
^FO20,252^A0N,27,27^FH^FDStation eol-1 socket A attempt 2/3^FS
^FO20,292^A0N,30,30^FH^FDFailed step: inrush^FS
^FO602,24^BQN,2,6^FDMA,2b1c7e3a-5d4f-4e2a-9c1b-0f6e8d7a5b43^FS
^FO602,210^A0N,22,22^FH^FD2b1c7e3a^FS
^XZ
"""

# every command a label may contain; anything else after a ^ or ~ would be injected
KNOWN_COMMANDS = {"XA", "XZ", "CI", "PW", "LL", "LH", "FO", "A0", "FH", "FD", "FS", "FR", "GB", "BQ"}


def commands(zpl: str) -> list[str]:
    assert "~" not in zpl
    return [part[:2] for part in zpl.split("^")[1:]]


def field_data(zpl: str) -> list[str]:
    return re.findall(r"\^FD(.*?)\^FS", zpl)


def unhex(data: str) -> str:
    """What the printer prints for ^FH field data (indicator _ , UTF-8 under ^CI28)."""
    return re.sub(rb"_([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]),
                  data.encode("ascii")).decode("utf-8")


# ================================================================================== ZPL
def test_pass_label_is_exactly_this() -> None:
    assert render_zpl(unit()) == PASS_ZPL


def test_fail_label_names_the_failed_step_and_is_reversed() -> None:
    zpl = render_zpl(unit(verdict="FAIL", attempt=2, failed_step="inrush", diagnosis="peak 412 A"))
    assert zpl == FAIL_ZPL
    assert "peak" not in zpl  # the diagnosis is the panel's and the MES's, not the label's


def test_label_fields_as_printed() -> None:
    zpl = render_zpl(unit(verdict="ERROR", failed_step=None, attempt=3))
    printed = [unhex(data) for data in field_data(zpl)]
    assert printed == ["BH12-2026-000042", "ERROR", "2026-11-30T14:03:12Z", "Plan eol_module v1.4",
                       "Station eol-1 socket A attempt 3/3", "Failed step: -",
                       "MA," + RUN_UUID, "2b1c7e3a"]


def test_naive_time_is_utc_not_local() -> None:
    zpl = render_zpl(unit(finished_at=datetime(2026, 11, 30, 14, 3, 12)))
    assert "^FD2026-11-30T14:03:12Z^FS" in zpl


def test_recorded_unit_without_failed_step_has_no_failed_line() -> None:
    zpl = render_zpl(unit(verdict="RECORDED"))
    assert "Failed step" not in zpl
    assert "^FR" in zpl  # not a PASS: reversed


def test_hostile_serial_cannot_inject_commands() -> None:
    hostile = unit(serial="BH12^XZ~JR")
    zpl = render_zpl(hostile)
    assert "^FH^FDBH12_5EXZ_7EJR^FS" in zpl
    assert set(commands(zpl)) <= KNOWN_COMMANDS
    assert zpl.count("^XA") == 1 and zpl.count("^XZ") == 1 and zpl.endswith("^XZ\n")
    assert unhex(field_data(zpl)[0]) == "BH12^XZ~JR"


@pytest.mark.parametrize("serial", ["A^FS^XA^FDx", "~JA~JR~PS", "a\n^XZ\r\n^XA", "x_5E", "\\&^",
                                    "Müller-Ω-β", "\x00\x1b\x7f"])
def test_every_hostile_text_is_escaped(serial: str) -> None:
    zpl = render_zpl(unit(serial=serial, plan=serial, station=serial, verdict="FAIL",
                          failed_step=serial))
    assert set(commands(zpl)) <= KNOWN_COMMANDS
    assert zpl.count("^XA") == 1 and zpl.count("^XZ") == 1
    for data in field_data(zpl):
        assert re.fullmatch(r"[\x20-\x7e]*", data) and not set(data) & set("^~\\")
    assert unhex(field_data(zpl)[0]) == serial


def test_escape_is_utf8_hex() -> None:
    assert zpl_escape("ü_^~\\ok") == "_C3_BC_5F_5E_7E_5Cok"


def test_long_fields_are_cut_and_shrunk_never_overflow() -> None:
    zpl = render_zpl(unit(serial="S" * 300, plan="p" * 300, verdict="FAIL", failed_step="x" * 500))
    plan = layout(unit(serial="S" * 300, plan="p" * 300, verdict="FAIL", failed_step="x" * 500))
    for item in plan.items:
        if isinstance(item, labels.Text):
            assert len(item.text) * 0.6 * item.height <= item.width + 1
    assert max(len(d) for d in field_data(zpl)) <= labels.MAX_FIELD_CHARS
    assert "SSS..." in zpl


def test_run_uuid_must_be_a_uuid() -> None:
    with pytest.raises(ValueError, match="not a UUID"):
        render_zpl(unit(run_uuid="x^XZ"))
    with pytest.raises(ValueError, match="not a UUID"):
        render_zpl(unit(run_uuid="not-a-uuid-but-has-dashes-000000000"))


def test_deterministic_and_sized() -> None:
    assert render_zpl(unit()) == render_zpl(unit())
    zpl = render_zpl(unit(), width_mm=104, height_mm=76, dpi=300)
    assert "^PW1248\n^LL912\n" in zpl
    with pytest.raises(ValueError, match="dpi"):
        render_zpl(unit(), dpi=250)
    with pytest.raises(ValueError, match="at least"):
        render_zpl(unit(), width_mm=20, height_mm=10)


# ================================================================================== previews
def sampled_matrix(image: Image.Image, qr: labels.Qr) -> tuple[tuple[bool, ...], ...]:
    m = qr.magnification
    return tuple(tuple(image.getpixel((qr.x + c * m + m // 2, qr.y + r * m + m // 2)) == 0
                       for c in range(qr.modules)) for r in range(qr.modules))


def the_qr(result: UnitResult) -> labels.Qr:
    return next(i for i in layout(result).items if isinstance(i, labels.Qr))


@pytest.mark.parametrize("verdict", ["PASS", "FAIL"])
def test_png_preview_qr_is_the_run_uuid(tmp_path: Path, verdict: str) -> None:
    result = unit(verdict=verdict, failed_step=None if verdict == "PASS" else "inrush")
    path = preview_png(result, tmp_path / "label.png")
    image = Image.open(path)
    assert image.size == (800, 400)
    assert round(image.info["dpi"][0]) == 203
    expected = segno.make(RUN_UUID, micro=False).matrix  # segno's own choice of code
    drawn = sampled_matrix(image.convert("1"), the_qr(result))
    assert drawn == tuple(tuple(bool(b) for b in row) for row in expected)
    # the quiet zone around the code is white
    qr = the_qr(result)
    q = 4 * qr.magnification
    box = image.convert("L").crop((qr.x - q, qr.y - q, qr.x + qr.modules * qr.magnification + q, qr.y))
    assert box.getextrema() == (255, 255)


def test_png_preview_is_deterministic_and_draws_the_verdict_box(tmp_path: Path) -> None:
    a = preview_png(unit(verdict="FAIL", failed_step="inrush"), tmp_path / "a.png").read_bytes()
    b = preview_png(unit(verdict="FAIL", failed_step="inrush"), tmp_path / "b.png").read_bytes()
    assert a == b
    image = Image.open(io.BytesIO(a)).convert("L")
    box = next(i for i in layout(unit(verdict="FAIL")).items if isinstance(i, labels.Box))
    corner = image.getpixel((box.x + 1, box.y + 1))
    assert corner == 0  # filled: FAIL is white on black
    passed = Image.open(preview_png(unit(), tmp_path / "p.png")).convert("L")
    assert passed.getpixel((box.x + box.width // 2, box.y + 1)) == 0        # outline
    assert passed.getpixel((box.x + box.width - 20, box.y + box.height // 2)) == 255  # hollow


def test_pdf_preview_is_the_same_picture_at_label_size(tmp_path: Path) -> None:
    result = unit(verdict="FAIL", failed_step="inrush")
    data = preview_pdf(result, tmp_path / "label.pdf").read_bytes()
    assert data.startswith(b"%PDF-")
    assert data == preview_pdf(result, tmp_path / "again.pdf").read_bytes()
    box = [float(v) for v in re.search(rb"/MediaBox \[ ([^\]]*)\]", data).group(1).split()]
    assert box[2] * 25.4 / 72 == pytest.approx(100.0) and box[3] * 25.4 / 72 == pytest.approx(50.0)
    assert b"(D:20261130140312Z)" in data  # the verdict time, not the time it was written
    if not features.check("libtiff"):
        pytest.skip("Pillow without libtiff writes the PDF's image as JPEG")
    # decode the PDF's own image: its stream is a G4 TIFF without the 8-byte header (Pillow's
    # PDF writer), and a TIFF of the same picture gives that header back
    length = int(re.search(rb"/Subtype /Image\n(?:.*\n)*?/Length (\d+)\n>>stream\n", data).group(1))
    start = data.index(b">>stream\n", data.index(b"/Subtype /Image")) + len(b">>stream\n")
    stream = data[start:start + length]
    header = io.BytesIO()
    render_image(result).save(header, "TIFF", compression="group4")
    embedded = Image.open(io.BytesIO(header.getvalue()[:8] + stream))
    embedded.load()
    png = Image.open(preview_png(result, tmp_path / "label.png")).convert("1")
    assert embedded.size == png.size == (800, 400)
    assert embedded.convert("1").tobytes() == png.tobytes()
    assert sampled_matrix(embedded.convert("1"), the_qr(result)) == tuple(
        tuple(bool(b) for b in row) for row in segno.make(RUN_UUID, micro=False).matrix)


# ================================================================================== sending
class Printer:
    """A raw-TCP listener on 127.0.0.1 that keeps what one connection sent."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(10)
        self.port = self.server.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.settimeout(10)
            while chunk := conn.recv(4096):
                self.received += chunk

    def close(self) -> bytes:
        self.thread.join(10)
        self.server.close()
        return self.received


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_printer_receives_exactly_the_zpl(tmp_path: Path) -> None:
    printer = Printer()
    section = LabelSection(printer=f"tcp://127.0.0.1:{printer.port}", preview=False)
    sent = LabelSink(section, fallback_folder=tmp_path / "fallback").send(
        unit(verdict="FAIL", attempt=2, failed_step="inrush"))
    assert printer.close() == FAIL_ZPL.encode("ascii")
    assert sent.printer == f"tcp://127.0.0.1:{printer.port}" and sent.files == ()
    assert not (tmp_path / "fallback").exists()


def test_printer_and_folder_both_get_the_label(tmp_path: Path) -> None:
    printer = Printer()
    section = LabelSection(printer=f"tcp://127.0.0.1:{printer.port}", folder="labels")
    sent = LabelSink(section, base_dir=tmp_path).send(unit())
    assert printer.close() == PASS_ZPL.encode("ascii")
    assert [p.name for p in sent.files] == ["BH12-2026-000042-2b1c7e3a.zpl",
                                            "BH12-2026-000042-2b1c7e3a.png"]
    assert (tmp_path / "labels" / "BH12-2026-000042-2b1c7e3a.zpl").read_text() == PASS_ZPL
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == sorted(p.name for p in sent.files)


def test_refusing_printer_raises_and_the_folder_keeps_the_label(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{closed_port()}"
    sink = LabelSink(LabelSection(printer=address, folder=str(tmp_path / "labels"), preview=False),
                     fallback_folder=tmp_path / "fallback")
    with pytest.raises(LabelNotPrinted) as info:
        sink.send(unit(serial="BH12^XZ~JR"))
    assert address in str(info.value) and "refused" in str(info.value)
    written = tmp_path / "labels" / "BH12_XZ_JR-2b1c7e3a.zpl"
    assert info.value.files == (written,)
    assert written.read_text() == render_zpl(unit(serial="BH12^XZ~JR"))
    assert not (tmp_path / "fallback").exists()


def test_refusing_printer_without_folder_writes_to_the_fallback(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{closed_port()}"
    sink = LabelSink(LabelSection(printer=address), fallback_folder=tmp_path / "fallback")
    with pytest.raises(LabelNotPrinted) as info:
        sink.send(unit())
    assert info.value.printer == address
    assert sorted(p.name for p in (tmp_path / "fallback").iterdir()) == [
        "BH12-2026-000042-2b1c7e3a.png", "BH12-2026-000042-2b1c7e3a.zpl"]
    assert set(info.value.files) == set((tmp_path / "fallback").iterdir())


def test_silent_printer_times_out_with_its_address(tmp_path: Path, monkeypatch) -> None:
    def silent(address, timeout):  # noqa: ANN001 - socket.create_connection's signature
        assert address == ("192.0.2.30", 9100) and timeout == 0.5
        raise socket.timeout("timed out")

    monkeypatch.setattr(labels.socket, "create_connection", silent)
    sink = LabelSink(LabelSection(printer="tcp://192.0.2.30", timeout="500 ms"),
                     fallback_folder=tmp_path)
    with pytest.raises(LabelNotPrinted, match=r"tcp://192\.0\.2\.30 did not answer within 500 ms"):
        sink.send(unit())


def test_printer_only_section_needs_a_fallback() -> None:
    with pytest.raises(ValueError, match="fallback"):
        LabelSink(LabelSection(printer="tcp://127.0.0.1:9100"))


def test_folder_only_section_writes_and_contacts_nobody(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(labels.socket, "create_connection",
                        lambda *a, **k: pytest.fail("no printer configured"))
    sent = LabelSink(LabelSection(folder="out"), base_dir=tmp_path).send(unit(serial="../../etc/x"))
    assert sent.printer is None
    assert [p.parent for p in sent.files] == [tmp_path / "out"] * 2
    assert sent.files[0].name == "_.._etc_x-2b1c7e3a.zpl"


# ================================================================================== station section
class Station(FileModel):
    name: str
    labels: LabelSection


def load(tmp_path: Path, text: str) -> Station:
    path = tmp_path / "station.yaml"
    path.write_text(text)
    data, located = load_yaml(path)
    return validate(Station, data, located, path)


def test_section_from_a_station_file(tmp_path: Path) -> None:
    station = load(tmp_path, """\
name: eol-1
labels:
  printer: tcp://192.0.2.30:9100
  folder: labels/
  preview: false
  width_mm: 104
  height_mm: 76.2
  dpi: 300
  timeout: "2 s"
""")
    section = station.labels
    assert section.printer_address == ("192.0.2.30", 9100)
    assert section.size == {"width_mm": 104, "height_mm": 76.2, "dpi": 300}
    assert section.timeout.value == 2.0 and section.preview is False


def test_section_defaults() -> None:
    section = LabelSection(folder="labels")
    assert section.printer is None and section.preview is True
    assert section.size == {"width_mm": 100.0, "height_mm": 50.0, "dpi": 203}
    assert section.timeout.value == 5.0


@pytest.mark.parametrize("text, port", [("tcp://printer-3.line2.example", 9100),
                                        ("tcp://[::1]:6101", 6101), ("tcp://127.0.0.1:9100/", 9100)])
def test_printer_forms(text: str, port: int) -> None:
    assert parse_printer(text)[1] == port
    assert LabelSection(printer=text).printer == text


@pytest.mark.parametrize("body, field, allowed", [
    ("  printer: http://192.0.2.30:9100\n", "labels.printer", "tcp://HOST:9100"),
    ("  printer: tcp://192.0.2.30:70000\n", "labels.printer", "tcp://HOST:9100"),
    ("  printer: tcp://bad host:9100\n", "labels.printer", "tcp://HOST:9100"),
    ("  printer: tcp://[192.0.2.1]:9100\n", "labels.printer", "tcp://HOST:9100"),
    ("  preview: true\n", "labels", "a printer (tcp://HOST:9100) and/or a folder"),
    ("  folder: ' '\n", "labels.folder", "a folder path"),
    ("  folder: x\n  prnter: tcp://127.0.0.1\n", "labels.prnter", "printer"),
    ("  folder: x\n  width_mm: '100'\n", "labels.width_mm", "number"),
    ("  folder: x\n  width_mm: 500\n", "labels.width_mm", "168"),
    ("  folder: x\n  dpi: 250\n", "labels.dpi", "203"),
    ("  folder: x\n  preview: 'yes'\n", "labels.preview", "bool"),
    ("  folder: x\n  timeout: 5\n", "labels.timeout", "a time"),
    ("  folder: x\n  timeout: '10 min'\n", "labels.timeout", "a printer timeout from 100 ms to 2 min"),
])
def test_section_errors_name_the_line(tmp_path: Path, body: str, field: str, allowed: str) -> None:
    with pytest.raises(FileError) as info:
        load(tmp_path, "name: eol-1\nlabels:\n" + body)
    err = info.value
    assert err.field == field
    assert allowed in err.allowed
    assert err.line is not None and err.line >= 2


def test_section_is_strict_in_code_too() -> None:
    with pytest.raises(ValidationError):
        LabelSection(folder="x", dpi="203")
    with pytest.raises(ValidationError):
        LabelSection(folder="x", copies=2)
    with pytest.raises(ValidationError):
        LabelSection(folder="x").model_copy(update={"printer": "tcp://127.0.0.1"}).__setattr__(
            "folder", "y")  # frozen
