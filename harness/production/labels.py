"""A label per unit: ZPL II for the Zebra printer at the end of the line, a PNG/PDF preview of
the same label, and :class:`LabelSink`, which sends it where the station file says.

What is on a label (all of it from one :class:`~harness.production.unit.UnitResult`, so the
box, the operator's screen and the MES record cannot disagree):

- the serial (large) and the verdict (large; PASS in an outlined box, every other verdict
  white on a black box so that a failed unit stands out on a pallet);
- the date and time of the verdict (``finished_at``, UTC, ISO 8601, ``2026-11-30T14:03:12Z``;
  a naive datetime is taken as UTC, never as the machine's local time);
- plan name and version, station, socket and attempt (``attempt 2/3``);
- the failed step when the verdict is not PASS (``-`` when none was recorded; a RECORDED unit
  without a failed step has no such line);
- a QR code (model 2, error correction M) of the run UUID, with its first 8 digits under it.

Escaping -- a serial can never inject ZPL: every text field is written with ``^FH`` (hex
indicator ``_``) and every character outside printable ASCII, plus ``^`` and ``~`` (the
command prefixes), ``_`` (the hex indicator itself) and ``\\``, is written as ``_XX`` hex
escapes of its UTF-8 bytes (the label is ``^CI28``, UTF-8, so ``Müller`` still prints as
``Müller``). ``BH12^XZ~JR`` is printed as written and sent as ``BH12_5EXZ_7EJR``: the printer
never sees a ``^`` or ``~`` that is not ours. Control characters (a newline in a serial) are
escaped the same way. The QR data is the run UUID, which must be a UUID written in hex digits
and dashes (``ValueError`` otherwise): nothing in it needs escaping. Text longer than a field
can show is cut, with ``...`` at the end (the QR code carries the full identity of the run).

Deterministic: the same result and size give the same bytes (ZPL, PNG and PDF alike): the
layout is integer arithmetic, the PDF's dates are the verdict time.

Where labels go (:class:`LabelSection`, a section of the station file)::

    labels:
      printer: tcp://192.0.2.30:9100   # raw TCP, the Zebra port (9100 if omitted)
      folder: labels/                  # <serial>-<uuid8>.zpl (+ .png when preview is true)
      preview: true
      width_mm: 100
      height_mm: 50
      dpi: 203                         # 152, 203, 300 or 600 (6, 8, 12, 24 dots/mm)
      timeout: "5 s"

Only the configured printer is ever contacted; the label is written to the folder before it
is sent, and when the printer cannot be reached and no folder is configured it is written to
the caller's fallback folder before :class:`LabelNotPrinted` is raised: a label is never lost.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tempfile
import time
import uuid as uuid_module
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, model_validator
from pydantic_core import PydanticCustomError

from bankmodel.channels import quantity_between
from bankmodel.specs.base import between
from bankmodel.units import Quantity
from harness.config import FileModel
from harness.production.unit import UnitResult

if TYPE_CHECKING:  # drawing libraries are loaded when a label is drawn, not when a station
    import segno  # file with an eol: section is validated
    from PIL import Image, ImageFont

# Zebra print heads: dots per inch -> dots per millimetre (Zebra rounds 203 dpi to 8 dots/mm)
DOTS_PER_MM: dict[int, int] = {152: 6, 203: 8, 300: 12, 600: 24}
DEFAULT_WIDTH_MM = 100.0
DEFAULT_HEIGHT_MM = 50.0
DEFAULT_DPI = 203
ZEBRA_PORT = 9100
QR_ERROR = "M"            # error correction level of the QR code, on the label and the preview
ELLIPSIS = "..."
MAX_FIELD_CHARS = 80      # no text field of a label holds more (before escaping)
_CHAR_WIDTH = 0.6         # ^A0 (scalable font 0): average character width / height, generously
_SAFE = frozenset(chr(c) for c in range(0x20, 0x7F)) - set("^~_\\")
_UUID_TEXT = re.compile(r"[0-9A-Fa-f-]{32,36}")


# ================================================================================== content
def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def label_time(result: UnitResult) -> str:
    """The time printed on the label: the verdict's, UTC, ISO 8601 to the second."""
    return _utc(result.finished_at).strftime("%Y-%m-%dT%H:%M:%SZ")


def qr_payload(result: UnitResult) -> str:
    """The QR code's data: the run UUID as the store writes it (ValueError if not a UUID)."""
    text = result.run_uuid
    try:
        if not isinstance(text, str) or not _UUID_TEXT.fullmatch(text):
            raise ValueError
        uuid_module.UUID(text)
    except ValueError:
        raise ValueError(f"run_uuid {text!r} of unit {result.serial!r} is not a UUID "
                         "(hex digits and dashes)") from None
    return text


def uuid8(result: UnitResult) -> str:
    """The first 8 hex digits of the run UUID (file names, the caption under the QR code)."""
    return uuid_module.UUID(qr_payload(result)).hex[:8]


def qr_code(result: UnitResult) -> segno.QRCode:
    """The QR code of the run UUID (model 2, error correction M, the smallest version)."""
    import segno
    return segno.make(qr_payload(result), error=QR_ERROR.lower(), micro=False, boost_error=False)


def _failed_line(result: UnitResult) -> str | None:
    if result.verdict == "PASS" or (result.verdict == "RECORDED" and not result.failed_step):
        return None
    return f"Failed step: {result.failed_step or '-'}"


def label_lines(result: UnitResult) -> tuple[str, ...]:
    """The small lines of the label, in order (everything but serial, verdict and QR code)."""
    lines = [label_time(result),
             f"Plan {result.plan} v{result.plan_version}",
             f"Station {result.station} socket {result.socket} "
             f"attempt {result.attempt}/{result.attempts_allowed}"]
    failed = _failed_line(result)
    if failed is not None:
        lines.append(failed)
    return tuple(lines)


# ================================================================================== layout
@dataclass(frozen=True)
class Text:
    x: int
    y: int
    height: int            # character height in dots (^A0N,h,h)
    text: str              # as printed (cut to fit, not escaped)
    width: int             # dots available to the right of x
    reverse: bool = False  # white on black (drawn over a filled box)


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int
    thickness: int         # == height: filled


@dataclass(frozen=True)
class Qr:
    x: int
    y: int
    magnification: int     # dots per module
    data: str
    modules: int


@dataclass(frozen=True)
class Layout:
    width: int             # dots (^PW)
    height: int            # dots (^LL)
    dpi: int
    items: tuple[Text | Box | Qr, ...]


def _dots(mm: float, dpi: int) -> int:
    if dpi not in DOTS_PER_MM:
        raise ValueError(f"dpi {dpi!r}: a Zebra print head has " + ", ".join(map(str, DOTS_PER_MM)))
    return int(round(mm * DOTS_PER_MM[dpi]))


def _fit(text: str, height: int, width: int, smallest: int) -> tuple[str, int]:
    """(text, height): the height shrunk down to ``smallest`` so the text fits ``width``
    dots, then the text cut (with ``...``) if it still does not."""
    if len(text) > MAX_FIELD_CHARS:
        text = text[:MAX_FIELD_CHARS - len(ELLIPSIS)] + ELLIPSIS
    fits = int(width / (_CHAR_WIDTH * max(len(text), 1)))
    height = max(min(height, fits), smallest)
    room = max(int(width / (_CHAR_WIDTH * height)), len(ELLIPSIS) + 1)
    if len(text) > room:
        text = text[:room - len(ELLIPSIS)] + ELLIPSIS
    return text, height


def layout(result: UnitResult, *, width_mm: float = DEFAULT_WIDTH_MM,
           height_mm: float = DEFAULT_HEIGHT_MM, dpi: int = DEFAULT_DPI) -> Layout:
    """Where everything goes, in printer dots: the one layout the ZPL and the preview draw."""
    width, height = _dots(width_mm, dpi), _dots(height_mm, dpi)
    margin = _dots(2.5, dpi)
    usable = height - 2 * margin
    if width < _dots(40, dpi) or height < _dots(25, dpi):
        raise ValueError(f"label {width_mm} x {height_mm} mm: at least 40 x 25 mm")
    large, small, gap = int(usable * 0.17), int(usable * 0.085), int(usable * 0.03)

    code = qr_code(result)
    modules = code.symbol_size(border=0)[0]
    caption_h = max(int(small * 0.75), 10)
    # a 4-module quiet zone on each side of the code, inside the label
    by_width = int(width * 0.30) // (modules + 8)
    by_height = (height - margin - caption_h) // (modules + 8)
    mag = max(1, min(10, by_width, by_height))
    quiet = 4 * mag
    qr_x, qr_y = width - quiet - modules * mag, quiet
    column = qr_x - quiet - margin   # text never enters the code's quiet zone

    items: list[Text | Box | Qr] = []
    x, y = margin, margin
    serial, h = _fit(result.serial, large, column, max(small, large // 2))
    items.append(Text(x, y, h, serial, column))
    y += large + gap

    pad = max(gap // 2, 2)
    verdict, h = _fit(result.verdict, large, column - 2 * pad, small)
    box_h = large + 2 * pad
    passed = result.verdict == "PASS"
    items.append(Box(x, y, column, box_h, max(DOTS_PER_MM[dpi] // 2, 2) if passed else box_h))
    items.append(Text(x + pad, y + pad + (large - h) // 2, h, verdict, column - 2 * pad,
                      reverse=not passed))
    y += box_h + gap

    for line in label_lines(result):
        text, h = _fit(line, small, column, max(small * 2 // 3, 8))
        items.append(Text(x, y, h, text, column))
        y += small + gap

    items.append(Qr(qr_x, qr_y, mag, qr_payload(result), modules))
    caption, h = _fit(uuid8(result), caption_h, modules * mag, caption_h)
    items.append(Text(qr_x, qr_y + modules * mag + quiet // 2, h, caption, modules * mag))
    return Layout(width, height, dpi, tuple(items))


# ================================================================================== ZPL
def zpl_escape(text: str) -> str:
    """Field data for ``^FH^FD``: printable ASCII except ``^ ~ _ \\`` as is, everything else as
    ``_XX`` hex escapes of its UTF-8 bytes (the label is ``^CI28``)."""
    return "".join(ch if ch in _SAFE else "".join(f"_{b:02X}" for b in ch.encode("utf-8"))
                   for ch in text)


def render_zpl(result: UnitResult, *, width_mm: float = DEFAULT_WIDTH_MM,
               height_mm: float = DEFAULT_HEIGHT_MM, dpi: int = DEFAULT_DPI) -> str:
    """The unit's label in ZPL II, one command group a line (the printer ignores the newlines)."""
    plan = layout(result, width_mm=width_mm, height_mm=height_mm, dpi=dpi)
    out = ["^XA", "^CI28", f"^PW{plan.width}", f"^LL{plan.height}", "^LH0,0"]
    for item in plan.items:
        if isinstance(item, Box):
            out.append(f"^FO{item.x},{item.y}^GB{item.width},{item.height},{item.thickness}^FS")
        elif isinstance(item, Qr):
            # ^FD of ^BQ: <error correction><input mode A(utomatic)>,<data>
            out.append(f"^FO{item.x},{item.y}^BQN,2,{item.magnification}"
                       f"^FD{QR_ERROR}A,{item.data}^FS")
        else:
            reverse = "^FR" if item.reverse else ""
            out.append(f"^FO{item.x},{item.y}^A0N,{item.height},{item.height}{reverse}"
                       f"^FH^FD{zpl_escape(item.text)}^FS")
    out.append("^XZ")
    return "\n".join(out) + "\n"


# ================================================================================== preview
def _font(height: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from PIL import ImageFont
    return ImageFont.load_default(size=max(height, 6))


def render_image(result: UnitResult, *, width_mm: float = DEFAULT_WIDTH_MM,
                 height_mm: float = DEFAULT_HEIGHT_MM, dpi: int = DEFAULT_DPI) -> Image.Image:
    """The label as the printer would print it: 1 bit per dot, one pixel per printer dot.

    The fonts differ from the printer's (Pillow's built-in font for ^A0); a text that would not
    fit its column in that font is drawn smaller, never cut differently from the ZPL. The
    built-in font has Latin letters only: other characters print on the label (^CI28) but show
    as boxes in the preview."""
    plan = layout(result, width_mm=width_mm, height_mm=height_mm, dpi=dpi)
    from PIL import Image, ImageDraw
    image = Image.new("1", (plan.width, plan.height), 1)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"
    for item in plan.items:
        if isinstance(item, Box):
            draw.rectangle((item.x, item.y, item.x + item.width - 1, item.y + item.height - 1),
                           fill=0 if item.thickness >= item.height else None, outline=0,
                           width=min(item.thickness, item.height))
        elif isinstance(item, Qr):
            matrix = qr_code(result).matrix
            m = item.magnification
            for row, bits in enumerate(matrix):
                for col, dark in enumerate(bits):
                    if dark:
                        draw.rectangle((item.x + col * m, item.y + row * m,
                                        item.x + col * m + m - 1, item.y + row * m + m - 1), fill=0)
        else:
            size = item.height
            font = _font(size)
            while size > 6 and draw.textlength(item.text, font=font) > item.width:
                size -= 1
                font = _font(size)
            draw.text((item.x, item.y), item.text, font=font, fill=1 if item.reverse else 0,
                      anchor="la")
    image.info["dpi"] = (dpi, dpi)
    return image


def _atomic_write(path: Path, write) -> Path:  # type: ignore[no-untyped-def]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def preview_png(result: UnitResult, path: Path | str, *, width_mm: float = DEFAULT_WIDTH_MM,
                height_mm: float = DEFAULT_HEIGHT_MM, dpi: int = DEFAULT_DPI) -> Path:
    """Write the label's preview as a PNG (one pixel per printer dot, the dpi recorded)."""
    image = render_image(result, width_mm=width_mm, height_mm=height_mm, dpi=dpi)
    return _atomic_write(Path(path), lambda f: image.save(f, "PNG", dpi=(dpi, dpi)))


def preview_pdf(result: UnitResult, path: Path | str, *, width_mm: float = DEFAULT_WIDTH_MM,
                height_mm: float = DEFAULT_HEIGHT_MM, dpi: int = DEFAULT_DPI) -> Path:
    """Write the label's preview as a one-page PDF of the label's size (the same picture as the
    PNG; its dates are the verdict time, so the file is the same for the same result)."""
    image = render_image(result, width_mm=width_mm, height_mm=height_mm, dpi=dpi)
    stamp = time.struct_time(_utc(result.finished_at).timetuple())
    title = f"{result.serial} {result.verdict} {result.run_uuid}"
    return _atomic_write(Path(path), lambda f: image.save(
        f, "PDF", resolution=DOTS_PER_MM[dpi] * 25.4,  # the page is the label's size in mm
        title=title, creator="bankhil", producer="bankhil",
        creationDate=stamp, modDate=stamp))


# ================================================================================== station section
_HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*")
_PRINTER = re.compile(r"tcp://(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:/\[\]\s]+))(?::(?P<port>\d{1,5}))?/?")
PRINTER_FORM = "tcp://HOST:9100 (raw TCP to a Zebra printer; HOST an IP address or host name)"


def parse_printer(text: str) -> tuple[str, int]:
    """``tcp://HOST[:PORT]`` -> (host, port); ValueError naming the form otherwise."""
    match = _PRINTER.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"printer {text!r}: {PRINTER_FORM}")
    host = match.group("v6") or match.group("host")
    port = int(match.group("port") or ZEBRA_PORT)
    try:
        ip = ipaddress.ip_address(host)
        if match.group("v6") and ip.version != 6:
            raise ValueError
    except ValueError:
        if match.group("v6") or not _HOST.fullmatch(host):
            raise ValueError(f"printer {text!r}: {PRINTER_FORM}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"printer {text!r}: a port from 1 to 65535")
    return host, port


def _printer(text: str) -> str:
    try:
        parse_printer(text)
    except ValueError:
        raise PydanticCustomError("printer", PRINTER_FORM) from None
    return text


def _folder(text: str) -> str:
    if not text.strip() or "\x00" in text:
        raise PydanticCustomError("folder", "a folder path, e.g. labels/ (relative to the station file)")
    return text


LabelTimeout = Annotated[Quantity["s"], quantity_between("100 ms", "2 min", "a printer timeout")]


class LabelSection(FileModel):
    """The ``labels`` section of a station file: where each unit's label goes."""

    printer: Annotated[str, AfterValidator(_printer)] | None = None
    folder: Annotated[str, AfterValidator(_folder)] | None = None
    preview: bool = True
    width_mm: between(40, 168) = DEFAULT_WIDTH_MM  # type: ignore[valid-type]
    height_mm: between(25, 300) = DEFAULT_HEIGHT_MM  # type: ignore[valid-type]
    dpi: Literal[152, 203, 300, 600] = DEFAULT_DPI
    timeout: LabelTimeout = Quantity.parse("5 s")

    @model_validator(mode="after")
    def _somewhere(self) -> "LabelSection":
        if self.printer is None and self.folder is None:
            raise PydanticCustomError("labels_nowhere",
                                      "a printer (tcp://HOST:9100) and/or a folder for the labels")
        return self

    @property
    def printer_address(self) -> tuple[str, int] | None:
        return None if self.printer is None else parse_printer(self.printer)

    @property
    def size(self) -> dict[str, float | int]:
        """The keyword arguments of :func:`render_zpl` and the previews."""
        return {"width_mm": self.width_mm, "height_mm": self.height_mm, "dpi": self.dpi}


# ================================================================================== sink
class LabelNotPrinted(Exception):
    """The printer could not be reached or did not take the label; ``files`` says where the
    label was written instead (never empty: a label is never lost)."""

    def __init__(self, serial: str, printer: str, reason: str, files: tuple[Path, ...]):
        self.serial = serial
        self.printer = printer
        self.reason = reason
        self.files = files
        written = ", ".join(str(f) for f in files) or "nowhere"
        super().__init__(f"label of unit {serial!r} not printed: printer {printer} {reason}; "
                         f"label written to {written}")


@dataclass(frozen=True)
class LabelSent:
    """Where one label went: the printer (None if none is configured) and the files written."""

    printer: str | None
    files: tuple[Path, ...]


def file_stem(result: UnitResult) -> str:
    """``<serial>-<uuid8>``, the serial reduced to characters safe in a file name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", result.serial)[:64].lstrip(".") or "unit"
    return f"{safe}-{uuid8(result)}"


class LabelSink:
    """Sends each unit's label where the station's :class:`LabelSection` says.

    ``base_dir`` resolves a relative ``folder`` (the station file's directory);
    ``fallback_folder`` receives the label when the printer fails and no folder is configured
    (required for a printer-only section, so that a label can never be lost)."""

    def __init__(self, section: LabelSection, *, fallback_folder: Path | str | None = None,
                 base_dir: Path | str | None = None):
        self.section = section
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        self.folder = None if section.folder is None else base / section.folder
        self.fallback_folder = None if fallback_folder is None else Path(fallback_folder)
        if self.folder is None and self.fallback_folder is None:
            raise ValueError("a label section with a printer and no folder needs a fallback "
                             "folder: a label the printer does not take must still be written")

    def render(self, result: UnitResult) -> str:
        return render_zpl(result, **self.section.size)  # type: ignore[arg-type]

    def write(self, result: UnitResult, folder: Path, zpl: bytes | None = None) -> tuple[Path, ...]:
        """Write ``<serial>-<uuid8>.zpl`` (and ``.png`` if ``preview``) into ``folder``."""
        if zpl is None:
            zpl = self.render(result).encode("utf-8")
        stem = file_stem(result)
        files = [_atomic_write(folder / f"{stem}.zpl", lambda f: f.write(zpl))]  # type: ignore[arg-type]
        if self.section.preview:
            files.append(preview_png(result, folder / f"{stem}.png", **self.section.size))  # type: ignore[arg-type]
        return tuple(files)

    def send(self, result: UnitResult) -> LabelSent:
        """Write the label to the folder (if any), then print it (if a printer is configured).

        Raises :class:`LabelNotPrinted` naming the printer when it cannot be reached, after the
        label was written to the folder or, without one, to the fallback folder."""
        zpl = self.render(result).encode("utf-8")
        files: tuple[Path, ...] = ()
        if self.folder is not None:
            files = self.write(result, self.folder, zpl)
        if self.section.printer is None:
            return LabelSent(None, files)
        try:
            self._print(zpl)
        except _PrinterFailed as failed:
            if not files:
                assert self.fallback_folder is not None  # checked in __init__
                files = self.write(result, self.fallback_folder, zpl)
            raise LabelNotPrinted(result.serial, self.section.printer, failed.reason,
                                  files) from failed.__cause__
        return LabelSent(self.section.printer, files)

    def _print(self, data: bytes) -> None:
        host, port = parse_printer(self.section.printer)  # type: ignore[arg-type]
        timeout = float(self.section.timeout.value)
        try:
            with socket.create_connection((host, port), timeout=timeout) as conn:
                conn.settimeout(timeout)
                conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
        except ConnectionRefusedError as exc:
            raise _PrinterFailed("refused the connection") from exc
        except (socket.timeout, TimeoutError) as exc:
            raise _PrinterFailed(f"did not answer within {self.section.timeout}") from exc
        except OSError as exc:
            raise _PrinterFailed(f"could not be reached ({exc.strerror or exc})") from exc


class _PrinterFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
