"""Validated harness files: stations (fixtures/stations/) and test plans (test_plans/).

Loading goes through :mod:`bankmodel.files` (safe YAML, line numbers, FileError), the one
loader every file of the project shares. It refuses what plain data never contains -- explicit
tags such as ``!!python/object`` (also on lists and mappings), merge keys, dates that do not
exist (``2026-02-30``), alias bombs and recursive aliases, files that are not regular files or are
too large -- each with its own line. This package adds what harness files need on top of it:
a loaded model keeps its :class:`Document` so that cross-file checks (plan against station
against DUT, in :mod:`harness.config.validate`) can still point at the offending line.

Public API: :func:`load_station`, :func:`load_plan`, :func:`validate_run` and the models.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, ClassVar, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, PrivateAttr

from bankmodel.files import MAX_FILE_BYTES, MAX_NODES  # noqa: F401  (the shared loader's limits)
from bankmodel.files import FileError, Located, dotted, load_yaml
from bankmodel.specs.base import FileModel  # strict and immutable: one base for every file model
from bankmodel.files import validate as _validate_model  # not "validate": that is a submodule

ModelT = TypeVar("ModelT", bound=BaseModel)

@dataclass(frozen=True)
class Document:
    """One loaded YAML file: its plain data and where each field path sits in it."""

    path: Path
    data: Any
    located: Located

    def line(self, *loc: Any) -> int | None:
        """1-based line of a field path (or of its deepest existing parent)."""
        return self.located.line_of(tuple(loc))

    def error(self, loc: tuple[Any, ...], found: str, allowed: str) -> FileError:
        """A FileError at a field path of this file."""
        return FileError(self.path, self.line(*loc), dotted(tuple(loc)), found, allowed)


def load_document(path: Path | str) -> Document:
    """Read a YAML file safely (nothing in it is executed); raise FileError if it is not data.

    The reading, limits and screening are :func:`bankmodel.files.load_yaml`'s, shared with the
    DUT, module, firmware, scenario and program files: regular files only, at most
    ``MAX_FILE_BYTES``, bounded nesting and alias expansion, no recursive aliases, no tags.
    """
    path = Path(path)
    data, located = load_yaml(path)
    return Document(path, data, located)


def _unwrap(annotation: Any) -> list[Any]:
    """The types an annotation can hold: through Annotated, Optional and unions."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return [t for arg in get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _keys_at(model: type[BaseModel], loc: tuple[Any, ...], data: Any) -> list[str] | None:
    """Field names allowed at ``loc``, following dicts and lists of models (``instruments.supply``
    is an entry of a dict, not a field) and tagged unions (by the item's ``kind``)."""
    candidates: list[Any] = [model]
    node = data
    for part in loc:
        node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
        following: list[Any] = []
        for candidate in candidates:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                field = candidate.model_fields.get(part) if isinstance(part, str) else None
                if field is not None:
                    following += _unwrap(field.annotation)
            elif get_origin(candidate) in (dict, list):
                following += _unwrap(get_args(candidate)[-1])
        candidates = following
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    kind = node.get("kind") if isinstance(node, dict) else None
    tagged = [m for m in models if kind is not None and "kind" in m.model_fields
              and kind in get_args(m.model_fields["kind"].annotation)]
    chosen = tagged or models
    if len(chosen) != 1:
        return None
    return sorted(chosen[0].model_fields)


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(part, int) and 0 <= part < len(node)


def validate_document(model: type[ModelT], document: Document) -> ModelT:
    """Validate a document into ``model`` (first error -> FileError with line), keep the document."""
    try:
        result = _validate_model(model, document.data, document.located, document.path)
    except FileError as exc:
        field = exc.field.replace(".[key]", "")  # a bad mapping key: name the key, not '[key]'
        allowed = exc.allowed
        if exc.found.startswith("unknown key"):  # the shared loader cannot walk into dicts
            loc = _split(field)[:-1]
            keys = _keys_at(model, loc, document.data)
            if keys is not None:
                allowed = "keys: " + ", ".join(keys)
        raise FileError(exc.path, exc.line, field, exc.found, allowed) from None
    if hasattr(result, "_document"):
        result._document = document  # type: ignore[attr-defined]
    return result


def _split(dotted: str) -> tuple[Any, ...]:
    """``'steps[1].limits.x'`` -> ``('steps', 1, 'limits', 'x')`` (inverse of the dotted path)."""
    parts: list[Any] = []
    for piece in re.findall(r"[^.\[\]]+|\[\d+\]", dotted):
        parts.append(int(piece[1:-1]) if piece.startswith("[") else piece)
    return tuple(parts)


class SourcedFile(FileModel):
    """A whole file's model that remembers its :class:`Document`, so that cross-file checks can
    still point at the offending line."""

    _document: Document | None = PrivateAttr(default=None)
    _label: ClassVar[str] = "<file>"

    @property
    def document(self) -> Document | None:
        """The file this model came from (None if built in code)."""
        return self._document

    @property
    def path(self) -> Path | None:
        return self._document.path if self._document else None

    def line(self, *loc: Any) -> int | None:
        return self._document.line(*loc) if self._document else None

    def error(self, loc: tuple[Any, ...], found: str, allowed: str) -> FileError:
        if self._document is None:
            return FileError(self._label, None, dotted(loc), found, allowed)
        return self._document.error(loc, found, allowed)


def today() -> _dt.date:
    """Today's date (a function so tests and replays can pass a fixed one instead)."""
    return _dt.date.today()


# The models import the helpers above from this package: keep these imports last.
from harness.config.plan import Limit, PlanFile, Step, load_plan  # noqa: E402
from harness.config.station import StationFile, load_station  # noqa: E402
from harness.config.validate import RunConfig, validate_run  # noqa: E402

__all__ = ["Document", "FileError", "Limit", "PlanFile", "RunConfig", "StationFile", "Step",
           "load_document", "load_plan", "load_station", "validate_document", "validate_run"]
