"""BMS profiles (fixtures/bms_profiles/): the BMS as deployed -- which frames a pack sends and
which service commands it takes.

Why a profile: the Pylontech-compatible CAN protocol (DOMAIN.md section 4) is a consensus, not a
standard. Many packs send only the core frames (0x351 limits, 0x355 SOC/SOH, 0x356 measurements,
0x359 alarms, 0x35C requests, 0x35E manufacturer); 0x35F, 0x372, 0x373 and 0x379 are extensions
some send and others do not; and no real BMS answers this bench's own service frames
(``instruments/dbc/bankhil_service.dbc``). Both ends read the same profile: the harness's CAN
client expects only the frames it names (identity, liveness, what the station can offer to a
plan) and the emulated BMS sends only those; a pack with service commands names the vendor DBC
they come from and which message and signals carry each command, so another vendor's service
tool frames are a new profile file, not new code.

Format (``fixtures/bms_profiles/bankhil_full.yaml`` is today's full behaviour)::

    name: pylontech_strict
    description: Core Pylontech frames only, no service commands
    protocol: pylontech
    frames: [0x351, 0x355, 0x356, 0x359, 0x35C, 0x35E]   # YAML reads 0x... as a number
    services:                                           # optional: omit for none
      dbc: bankhil_service.dbc          # beside this file, else in instruments/dbc/
      force_disconnect: {message: Service_ForceDisconnect, module: ModuleIndex, switch: ForceOff}
      silence_module: {message: Service_SilenceModule, module: ModuleIndex, switch: Silent}

A profile is named by its stem (looked up in ``fixtures/bms_profiles/``) or by a path. A bad
profile is a :class:`~bankmodel.files.FileError` naming the profile file, line and field
(the DBC and its messages are checked when the profile is loaded, not when a command is sent).
This module imports nothing of the harness, the instruments or the emulator: both ends use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PrivateAttr, field_validator
from pydantic_core import PydanticCustomError

from bankmodel.files import FileError, load_yaml, validate
from bankmodel.specs.base import FileModel
from bankmodel.specs.loading import FIXTURES

PROFILES = FIXTURES / "bms_profiles"
DBC_FOLDER = FIXTURES.parent / "instruments" / "dbc"  # the shipped DBCs (read as files, never imported)
FULL_PROFILE = "bankhil_full"  # the default: every frame and the bench's own service commands

# battery -> inverter frames of the protocol (DOMAIN.md section 4; instruments/dbc/pylontech_lv.dbc)
BATTERY_FRAMES: dict[int, str] = {
    0x351: "charge/discharge limits", 0x355: "SOC/SOH", 0x356: "voltage, current, temperature",
    0x359: "alarms, warnings, module count", 0x35C: "charge/discharge enables",
    0x35E: "manufacturer name", 0x35F: "model, firmware, online capacity",
    0x372: "module counts", 0x373: "cell and temperature extremes", 0x379: "installed capacity",
}
# without these the Bms role has no limits, telemetry or status: not a usable pack profile
REQUIRED_FRAMES = (0x351, 0x355, 0x356, 0x359)
SERVICE_COMMANDS = ("force_disconnect", "silence_module")


def hex_id(frame_id: int) -> str:
    return f"0x{frame_id:03X}"


def _frame_id(value: Any) -> Any:
    """A frame ID as YAML gives it (``0x351`` is a number) or as text (``"0x351"``)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text, 16) if text.lower().startswith("0x") else value
        except ValueError:
            return value
    return value


def _known_frame(value: int) -> int:
    if value not in BATTERY_FRAMES:
        raise PydanticCustomError("bms_frame", "a frame the battery sends: " + ", ".join(
            f"{hex_id(i)} ({what})" for i, what in BATTERY_FRAMES.items()))
    return value


FrameId = Annotated[int, BeforeValidator(_frame_id), AfterValidator(_known_frame)]


class ServiceCommand(FileModel):
    """One service command: the DBC message that carries it and its two signals."""

    message: Annotated[str, Field(min_length=1, max_length=100)]
    module: Annotated[str, Field(min_length=1, max_length=100)] = "ModuleIndex"
    switch: Annotated[str, Field(min_length=1, max_length=100)]


class BmsServices(FileModel):
    """Service commands the pack takes (what its vendor's service tool sends), from a DBC."""

    dbc: Annotated[str, Field(min_length=1, max_length=300)]
    force_disconnect: ServiceCommand
    silence_module: ServiceCommand


class BmsProfile(FileModel):
    """What one BMS, as deployed, puts on the bus and takes from it."""

    name: Annotated[str, Field(min_length=1, max_length=100)]
    description: str = ""
    protocol: Literal["pylontech"] = "pylontech"
    frames: Annotated[list[FrameId], Field(min_length=1)]
    services: BmsServices | None = None
    # where the file was (None if built in code): service DBCs are found beside it
    _source: str | None = PrivateAttr(default=None)

    @field_validator("frames")
    @classmethod
    def _frames(cls, frames: list[int]) -> list[int]:
        if len(set(frames)) != len(frames):
            twice = sorted({f for f in frames if frames.count(f) > 1})
            raise PydanticCustomError("bms_frames_twice", "each frame once ({twice} twice)",
                                      {"twice": ", ".join(hex_id(f) for f in twice)})
        missing = [f for f in REQUIRED_FRAMES if f not in frames]
        if missing:
            raise PydanticCustomError(
                "bms_frames_required", "at least {need} (limits, SOC/SOH, measurements, alarms: "
                "the Bms role needs them); missing {missing}",
                {"need": ", ".join(hex_id(f) for f in REQUIRED_FRAMES),
                 "missing": ", ".join(hex_id(f) for f in missing)})
        return sorted(frames)

    # -- questions both ends ask ----------------------------------------------------------------
    def sends(self, frame_id: int) -> bool:
        return frame_id in self.frames

    @property
    def has_services(self) -> bool:
        return self.services is not None

    def service_dbc_path(self) -> Path | None:
        """The vendor DBC of the service commands (None without services)."""
        if self.services is None:
            return None
        return _dbc_path(self.services.dbc, Path(self._source) if self._source else None)

    @property
    def source(self) -> str | None:
        """The file the profile was loaded from (None if built in code)."""
        return self._source

    def describe(self) -> str:
        """One line for a report or a refusal: the name, the frames and the services."""
        services = f"services from {self.services.dbc}" if self.services else "no service commands"
        return f"{self.name} (frames {', '.join(hex_id(f) for f in self.frames)}; {services})"


def _dbc_path(name: str, profile_path: Path | None) -> Path:
    """A service DBC as the profile names it: absolute, beside the profile, else a shipped DBC."""
    path = Path(name)
    if path.is_absolute():
        return path
    if profile_path is not None and (profile_path.parent / path).is_file():
        return profile_path.parent / path
    return DBC_FOLDER / path


def profile_path(name_or_path: str | Path) -> Path:
    """A profile name (stem in fixtures/bms_profiles/) or a path to its file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return PROFILES / f"{name_or_path}.yaml"


def profile_names() -> list[str]:
    """The shipped profiles, by name."""
    return sorted(p.stem for p in PROFILES.glob("*.yaml"))


def _check_services(profile: BmsProfile, path: Path, located: Any) -> None:
    """The service DBC exists and carries each command's message and signals (else a located
    error at the profile's line): a profile that names a frame nobody can encode is refused when
    it is loaded, not when a test step sends the command."""
    services = profile.services
    if services is None:
        return
    dbc = _dbc_path(services.dbc, path)
    if not dbc.is_file():
        raise FileError(path, located.line_of(("services", "dbc")), "services.dbc",
                        f"'{services.dbc}' (no {dbc})",
                        f"a DBC file beside the profile or in {DBC_FOLDER}")
    import cantools  # only a profile with services needs it
    try:
        db = cantools.database.load_file(str(dbc), strict=True)
    except Exception as exc:  # cantools raises several types; all mean "not a usable DBC"
        raise FileError(path, located.line_of(("services", "dbc")), "services.dbc",
                        f"'{services.dbc}' ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                        "a DBC file cantools loads") from None
    messages = {m.name: m for m in getattr(db, "messages", [])}
    for command in SERVICE_COMMANDS:
        spec: ServiceCommand = getattr(services, command)
        message = messages.get(spec.message)
        if message is None:
            raise FileError(path, located.line_of(("services", command, "message")),
                            f"services.{command}.message", f"'{spec.message}' (not in {dbc.name})",
                            f"a message of {dbc.name}: " + ", ".join(sorted(messages)))
        if message.is_extended_frame or message.frame_id in BATTERY_FRAMES or message.frame_id == 0x305:
            raise FileError(path, located.line_of(("services", command, "message")),
                            f"services.{command}.message",
                            f"'{spec.message}' ({hex_id(message.frame_id)})",
                            "a standard (11-bit) frame that is not one of the protocol's own IDs")
        signals = {s.name for s in message.signals}
        for field in ("module", "switch"):
            signal = getattr(spec, field)
            if signal not in signals:
                raise FileError(path, located.line_of(("services", command, field)),
                                f"services.{command}.{field}", f"'{signal}' (not a signal of {spec.message})",
                                "a signal of " + spec.message + ": " + ", ".join(sorted(signals)))
    ids = [messages[getattr(services, c).message].frame_id for c in SERVICE_COMMANDS]
    if len(set(ids)) != len(ids):
        raise FileError(path, located.line_of(("services", "silence_module", "message")),
                        "services.silence_module.message", "the same message as force_disconnect",
                        "a message of its own for each command")


def load_bms_profile(name_or_path: str | Path) -> BmsProfile:
    """Load and check a profile by name or path; raise FileError (file, line, field) if bad.

    A bare name that is not a shipped profile is refused with the names that exist.
    """
    path = profile_path(name_or_path)
    if not path.is_file() and path.parent == PROFILES and not Path(str(name_or_path)).suffix:
        raise FileError(path, None, "", f"no BMS profile '{name_or_path}'",
                        "a profile in fixtures/bms_profiles/: " + ", ".join(profile_names())
                        + ", or a path to a profile file")
    data, located = load_yaml(path)
    profile = validate(BmsProfile, data, located, path)
    _check_services(profile, path, located)
    profile._source = str(path)
    return profile


__all__ = ["BATTERY_FRAMES", "BmsProfile", "BmsServices", "FULL_PROFILE", "PROFILES", "REQUIRED_FRAMES",
           "SERVICE_COMMANDS", "ServiceCommand", "hex_id", "load_bms_profile", "profile_names",
           "profile_path"]
