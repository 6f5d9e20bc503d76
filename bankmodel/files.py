"""Safe YAML loading with line numbers, and validation errors a person can act on.

A bad fixture file must stop a run with the file, the line, the field path, what was found and
what is allowed -- never a traceback, never a hang. Every YAML file the project reads (station,
plan, DUT, module type, firmware profile, scenario, bench program) goes through
:func:`load_yaml`, which is built to survive a hostile file:

- only a regular file is opened (``os.stat`` first: a FIFO, a device such as ``/dev/zero``, a
  directory or a socket is refused before it is opened), and at most :data:`MAX_FILE_BYTES` of
  it are read;
- the file is parsed into events (libyaml where available) and composed here, iteratively, with
  limits: at most :data:`MAX_DEPTH` levels of nesting, :data:`MAX_NODES` values as written and
  :data:`MAX_NODES` once aliases are expanded (an alias bomb is refused, not expanded), no alias
  inside the value it refers to (``loop: &a [*a]``), one document per file;
- only plain data: explicit tags such as ``!!python/object/apply:os.system`` (on scalars, lists
  and mappings alike), merge keys (``<<``) and dates that do not exist (``2026-02-30``) are
  refused with their line. Nothing in a file is ever executed or imported.

The composed tree keeps the line of every mapping key and value; pydantic validates the plain
data and its error locations are mapped back to those lines (:func:`validate`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_FILE_BYTES = 256 * 1024  # the largest shipped file is ~13 kB
MAX_DEPTH = 64               # levels of nesting, also once aliases are expanded
MAX_NODES = 50_000           # values as written, and again once aliases are expanded
_MAX_TEXT = 300              # characters of a found/field text shown in a message

_PLAIN_TAGS = {f"tag:yaml.org,2002:{name}" for name in
               ("str", "int", "float", "bool", "null", "timestamp", "seq", "map")}
_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"
_PLAIN_DATA = ("plain YAML data: mappings, lists, text, numbers, true/false, dates "
               "(no tags such as !!python/...)")


def _one_line(text: str, limit: int | None = None) -> str:
    """A message part on one line: control characters escaped, very long text shortened."""
    text = "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in str(text))
    if limit is not None and len(text) > limit:
        text = text[:limit - 3] + "..."
    return text


class FileError(Exception):
    """A fixture, plan or station file that cannot be used, with everything needed to fix it.

    ``str(err)`` is always one line: ``file:line: field: found ...; allowed: ...``.
    """

    def __init__(self, path: Path | str, line: int | None, field: str, found: str, allowed: str):
        self.path = str(path)
        self.line = line
        self.field = field
        self.found = found
        self.allowed = allowed
        where = f"{_one_line(self.path)}:{line}" if line else _one_line(self.path)
        super().__init__(f"{where}: {_one_line(field, _MAX_TEXT) or '(file)'}: found "
                         f"{_one_line(found, _MAX_TEXT)}; allowed: {_one_line(allowed, 2000)}")


# ================================================================================== reading
_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"))


def _kind_of(mode: int) -> str | None:
    """What a non-regular file is (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")


def read_text(path: Path | str) -> str:
    """The text of a regular file of at most MAX_FILE_BYTES bytes of UTF-8; FileError otherwise.

    ``os.stat`` comes first, so a FIFO (which would block ``open``), a device (``/dev/zero``
    never ends) or a directory is refused without being opened; the file is then opened
    non-blocking, checked again on the open descriptor (it may have been swapped meanwhile),
    and read with a bound.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileError(path, None, "", "no such file", "an existing YAML file") from None
    except (OSError, ValueError) as exc:
        raise FileError(path, None, "", f"a path that cannot be read ({_reason(exc)})",
                        "a readable regular YAML file") from None
    kind = _kind_of(info.st_mode)
    if kind is not None:
        raise FileError(path, None, "", kind, "a regular YAML file")
    if info.st_size > MAX_FILE_BYTES:
        raise FileError(path, None, "", f"a file of {info.st_size} bytes",
                        f"at most {MAX_FILE_BYTES} bytes")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise FileError(path, None, "", f"a file that cannot be opened ({_reason(exc)})",
                        "a readable regular YAML file") from None
    try:
        with os.fdopen(fd, "rb") as handle:
            fd = -1
            kind = _kind_of(os.fstat(handle.fileno()).st_mode)
            if kind is not None:
                raise FileError(path, None, "", kind, "a regular YAML file")
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise FileError(path, None, "", f"a file that cannot be read ({_reason(exc)})",
                        "a readable regular YAML file") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(raw) > MAX_FILE_BYTES:
        raise FileError(path, None, "", f"a file of more than {MAX_FILE_BYTES} bytes",
                        f"at most {MAX_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise FileError(path, line, "", f"bytes that are not UTF-8 text (byte {exc.start})",
                        "a UTF-8 YAML file") from None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or exc.__class__.__name__


# ================================================================================== composing
class _Frame:
    """A list or mapping being composed: its node, anchor, and where it sits."""

    __slots__ = ("node", "anchor", "key", "size", "depth")

    def __init__(self, node: yaml.Node, anchor: str | None) -> None:
        self.node = node
        self.anchor = anchor
        self.key: yaml.Node | None = None  # a mapping's key waiting for its value
        self.size = 1
        self.depth = 1


class _Refused(Exception):
    """Raised while composing; becomes a FileError with the file's path."""

    def __init__(self, line: int | None, loc: tuple[Any, ...], found: str, allowed: str):
        super().__init__(found)
        self.line, self.loc, self.found, self.allowed = line, loc, found, allowed


_RESOLVER = yaml.SafeLoader("")  # resolves implicit tags exactly as the safe loader does (stateless)
_EVENTS_LOADER = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader


def _constructor() -> yaml.SafeLoader:
    """A constructor for one file (PyYAML's keeps every node it built: never share one)."""
    return yaml.SafeLoader("")


def _line(event: yaml.Event) -> int | None:
    mark = event.start_mark
    return mark.line + 1 if mark is not None else None


def _stack_loc(stack: list[_Frame]) -> tuple[Any, ...]:
    """The field path of the value about to be attached to the innermost collection."""
    loc: list[Any] = []
    for frame in stack:
        if isinstance(frame.node, yaml.SequenceNode):
            loc.append(len(frame.node.value))
        elif frame.key is not None:
            loc.append(frame.key.value if isinstance(frame.key, yaml.ScalarNode) else "?")
    return tuple(loc)


def compose(text: str) -> yaml.Node | None:
    """Compose one YAML document into a node tree, iteratively and with limits.

    Raises ``_Refused`` (non-plain or oversized data) or ``yaml.YAMLError`` (syntax).
    """
    constructor = _constructor()
    anchors: dict[str, yaml.Node] = {}
    open_anchors: set[str] = set()
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, expanded depth)
    stack: list[_Frame] = []
    root: yaml.Node | None = None
    documents = 0
    written = 0

    def attach(node: yaml.Node, size: int, depth: int, line: int | None) -> None:
        nonlocal root
        if not stack:
            root = node
            measured[id(node)] = (size, depth)
            return
        top = stack[-1]
        top.size += size
        top.depth = max(top.depth, depth + 1)
        if isinstance(top.node, yaml.SequenceNode):
            top.node.value.append(node)
        elif top.key is None:
            if node.tag == _MERGE_TAG:
                raise _Refused(line, _stack_loc(stack), "a YAML merge key (<<)",
                               "each key written out; anchors (&a) and aliases (*a) are fine")
            top.key = node
        else:
            top.node.value.append((top.key, node))
            top.key = None

    def check_tag(node: yaml.Node, line: int | None) -> None:
        if node.tag == _MERGE_TAG and isinstance(node, yaml.ScalarNode):
            return  # a key: reported by attach() with the path it sits at
        if node.tag not in _PLAIN_TAGS:
            raise _Refused(line, _stack_loc(stack), f"the YAML tag '{node.tag}'", _PLAIN_DATA)
        if node.tag == "tag:yaml.org,2002:timestamp":
            try:
                constructor.construct_object(node, deep=True)
            except Exception as exc:  # noqa: BLE001 - any failure of PyYAML's date parser
                raise _Refused(line, _stack_loc(stack), f"'{node.value}' ({exc})",
                               "a real date as YYYY-MM-DD, e.g. 2027-03-31") from None

    def anchor(name: str | None, node: yaml.Node, line: int | None) -> None:
        if name is None:
            return
        if name in anchors:
            raise _Refused(line, _stack_loc(stack), f"the anchor &{name} a second time",
                           "each anchor name once")
        anchors[name] = node

    events = yaml.parse(text, Loader=_EVENTS_LOADER)
    try:
        for event in events:
            line = _line(event)
            if isinstance(event, (yaml.StreamStartEvent, yaml.StreamEndEvent,
                                  yaml.DocumentEndEvent)):
                continue
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise _Refused(line, (), "a second YAML document (---)",
                                   "one document per file")
                continue
            if isinstance(event, yaml.AliasEvent):
                name = event.anchor
                if name in open_anchors:
                    raise _Refused(line, _stack_loc(stack),
                                   f"a recursive alias (*{name} inside the value &{name} names)",
                                   "aliases (*a) only to a complete value defined before them")
                if name not in anchors:
                    raise _Refused(line, _stack_loc(stack), f"the undefined alias *{name}",
                                   "an alias (*a) after its anchor (&a)")
                node = anchors[name]
                size, depth = measured[id(node)]
                attach(node, size, depth, line)
                continue
            written += 1
            if written > MAX_NODES:
                raise _Refused(1, (), f"more than {MAX_NODES} values",
                               "a plain file of a sensible size")
            if isinstance(event, yaml.ScalarEvent):
                tag = event.tag
                if tag is None or tag == "!":
                    tag = _RESOLVER.resolve(yaml.ScalarNode, event.value, event.implicit)
                as_key = bool(stack) and isinstance(stack[-1].node, yaml.MappingNode) \
                    and stack[-1].key is None
                if tag in (_MERGE_TAG, _VALUE_TAG) and not (tag == _MERGE_TAG and as_key):
                    tag = "tag:yaml.org,2002:str"  # '<<' or '=' as a value is just text
                node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark,
                                       style=event.style)
                check_tag(node, line)
                anchor(event.anchor, node, line)
                measured[id(node)] = (1, 1)
                attach(node, 1, 1, line)
            elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                sequence = isinstance(event, yaml.SequenceStartEvent)
                kind = yaml.SequenceNode if sequence else yaml.MappingNode
                tag = event.tag
                if tag is None or tag == "!":
                    tag = _RESOLVER.resolve(kind, None, event.implicit)
                node = kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
                check_tag(node, line)
                anchor(event.anchor, node, line)
                if len(stack) >= MAX_DEPTH:
                    raise _Refused(1, (), f"data nested too deeply (more than {MAX_DEPTH} "
                                   f"levels at line {line})", "a plain file")
                frame = _Frame(node, event.anchor)
                if stack and not isinstance(stack[-1].node, yaml.SequenceNode) \
                        and stack[-1].key is None:
                    raise _Refused(line, _stack_loc(stack), "a list or mapping as a key",
                                   "text keys")
                stack.append(frame)
                if event.anchor is not None:
                    open_anchors.add(event.anchor)
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                frame = stack.pop()
                frame.node.end_mark = event.end_mark
                if frame.anchor is not None:
                    open_anchors.discard(frame.anchor)
                if frame.size > MAX_NODES:
                    raise _Refused(1, (), f"more than {MAX_NODES} values once aliases are "
                                   f"expanded (the value ending at line {line})",
                                   "a plain file; use fewer nested aliases")
                if frame.depth > MAX_DEPTH:
                    raise _Refused(1, (), f"data nested too deeply once aliases are expanded "
                                   f"(more than {MAX_DEPTH} levels, at line {line})",
                                   "a plain file")
                measured[id(frame.node)] = (frame.size, frame.depth)
                attach(frame.node, frame.size, frame.depth, _line(event))
    finally:
        events.close()
    return root


# ================================================================================== building
class Located:
    """Plain data plus a map from field path (tuple of keys/indices) to 1-based line number."""

    def __init__(self) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}
        self._constructor = _constructor()

    def build(self, node: yaml.Node, path: tuple[Any, ...]) -> Any:
        """Plain data from a composed tree (depth and size already bounded by :func:`compose`)."""
        self.lines[path] = node.start_mark.line + 1
        if node.tag not in _PLAIN_TAGS:  # compose refuses these; a tree built elsewhere too
            raise FileError("", node.start_mark.line + 1, dotted(path),
                            f"the YAML tag '{node.tag}'", _PLAIN_DATA)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is None or not isinstance(key, str):
                    raise FileError("", key_node.start_mark.line + 1, dotted(path),
                                    "a non-text key", "text keys")
                if key_node.tag == _MERGE_TAG:
                    raise FileError("", key_node.start_mark.line + 1, dotted(path),
                                    "a YAML merge key (<<)",
                                    "each key written out; anchors (&a) and aliases (*a) are fine")
                if key in out:
                    raise FileError("", key_node.start_mark.line + 1, dotted(path + (key,)),
                                    f"'{key}' twice", "each key once")
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        try:
            return self._constructor.construct_object(node, deep=True)
        except Exception as exc:  # noqa: BLE001 - PyYAML raises IndexError on "!!float" alone
            raise FileError("", node.start_mark.line + 1, dotted(path),
                            _describe_found(node.value) + f" ({_one_line(exc, 80)})",
                            "a value YAML can read") from None

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        """Line of the deepest known prefix of a pydantic error location."""
        loc = tuple(loc)
        while loc:
            try:
                if loc in self.lines:
                    return self.lines[loc]
            except TypeError:  # an unhashable part: fall back to the parent
                pass
            loc = loc[:-1]
        return self.lines.get((), None)


def dotted(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def load_yaml(path: Path | str) -> tuple[Any, Located]:
    """Read a YAML file safely; return its plain data and the line map. Raises FileError.

    The one loading function of the project: station and plan files (``harness.config``) and
    DUT, module, firmware, scenario and program files (``emulator``) all come through here.
    """
    path = Path(path)
    text = read_text(path)
    try:
        node = compose(text)
    except _Refused as exc:
        raise FileError(path, exc.line, dotted(exc.loc), exc.found, exc.allowed) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise FileError(path, line, "", f"invalid YAML ({exc.problem})", "YAML syntax") from None
    except yaml.YAMLError as exc:
        raise FileError(path, None, "", f"invalid YAML ({exc})", "YAML syntax") from None
    except (RecursionError, MemoryError):  # not expected within the limits; never a traceback
        raise FileError(path, None, "", "data too large or nested too deeply",
                        "a plain file") from None
    if node is None:
        raise FileError(path, 1, "", "an empty file", "a YAML mapping")
    located = Located()
    try:
        data = located.build(node, ())
    except FileError as exc:
        raise FileError(path, exc.line, exc.field, exc.found, exc.allowed) from None
    except yaml.YAMLError as exc:
        raise FileError(path, None, "", f"unsupported YAML ({exc})", "plain YAML data") from None
    except (RecursionError, MemoryError):
        raise FileError(path, None, "", "data too large or nested too deeply",
                        "a plain file") from None
    finally:
        located._constructor = None  # type: ignore[assignment]  # its cache is not needed now
    return data, located


def _describe_found(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(model: type[ModelT], data: Any, located: Located, path: Path | str) -> ModelT:
    """Validate plain data into ``model``; the first error becomes a FileError with its line."""
    if not isinstance(data, dict):
        raise FileError(path, located.line_of(()), "", f"a {type(data).__name__}", "a YAML mapping")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = _data_loc(data, tuple(err.get("loc", ())))
        kind = err.get("type", "")
        ctx = err.get("ctx") or {}
        if kind == "missing":
            found, allowed = "nothing (field missing)", "this field is required"
        elif kind == "extra_forbidden":
            found = f"unknown key '{loc[-1]}'" if loc else "an unknown key"
            allowed = "keys: " + ", ".join(_known_keys(model, loc[:-1], data)) if loc else "known keys"
        elif kind == "literal_error":
            found, allowed = _describe_found(err.get("input")), f"one of {ctx.get('expected', '?')}"
        else:
            found = _describe_found(err.get("input"))
            allowed = err.get("msg", "a valid value")
        raise FileError(path, located.line_of(loc), dotted(loc), found, allowed) from None


def _data_loc(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the tag pydantic inserts for a discriminated union (faults[0].soc_mismatch.x).

    The file has no such key: the tag is the item's ``kind``. Without this the error points at
    the list item's line and names a field path the user never wrote.
    """
    out: list[Any] = []
    node = data
    for part in loc:
        if (isinstance(node, dict) and isinstance(part, str) and part not in node
                and part in {str(v) for v in node.values() if isinstance(v, str)}):
            continue
        out.append(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return tuple(out)


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...], data: Any = None) -> list[str]:
    """Field names allowed at a location, by walking nested pydantic models where possible."""
    current: Any = model
    node = data
    for part in loc:
        node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return ["(see the documentation)"]
        annotation = field.annotation
        current = _model_for(annotation, node)
        if current is None:
            return ["(see the documentation)"]
    return sorted(getattr(current, "model_fields", {}).keys())


def _has(node: Any, part: Any) -> bool:
    return (part in node) if isinstance(node, dict) else (isinstance(part, int) and part < len(node))


def _model_for(annotation: Any, node: Any) -> Any:
    """The model an item of this annotation is validated as: by its ``kind`` tag in a union."""
    items = node if isinstance(node, list) else [node]
    kind = next((i.get("kind") for i in items if isinstance(i, dict)), None)
    if kind is not None:
        for model in _models_in(annotation):
            tag = model.model_fields.get("kind")
            if tag is not None and kind in getattr(tag.annotation, "__args__", ()):
                return model
    return _first_model_in(annotation)


def _models_in(annotation: Any) -> list[Any]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[Any] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found += _models_in(arg)
    return found


def _first_model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model_in(arg)
        if found is not None:
            return found
    return None


def load_model(model: type[ModelT], path: Path | str) -> ModelT:
    """Load and validate one YAML file into a pydantic model, or raise FileError."""
    data, located = load_yaml(path)
    return validate(model, data, located, path)
