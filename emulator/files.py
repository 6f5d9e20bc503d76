"""Safe YAML loading with line numbers, and validation errors a person can act on.

A bad fixture file must stop a run with the file, the line, the field path, what was found and
what is allowed -- never a traceback. PyYAML's ``SafeLoader`` builds only plain data (nothing in a
file is ever executed); we compose the node tree first so that every mapping key and value keeps
the line it came from, then let pydantic validate the plain data and map its error locations back
to those lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class FileError(Exception):
    """A fixture, plan or station file that cannot be used, with everything needed to fix it."""

    def __init__(self, path: Path | str, line: int | None, field: str, found: str, allowed: str):
        self.path = str(path)
        self.line = line
        self.field = field
        self.found = found
        self.allowed = allowed
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {field or '(file)'}: found {found}; allowed: {allowed}")


class _Located:
    """Plain data plus a map from field path (tuple of keys/indices) to 1-based line number."""

    def __init__(self) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}

    def build(self, node: yaml.Node, path: tuple[Any, ...]) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = yaml.SafeLoader.construct_scalar(_SCALAR_LOADER, key_node) if isinstance(
                    key_node, yaml.ScalarNode) else None
                if key is None or not isinstance(key, str):
                    raise FileError("", key_node.start_mark.line + 1, ".".join(map(str, path)),
                                    "a non-text key", "text keys")
                if key in out:
                    raise FileError("", key_node.start_mark.line + 1, _dotted(path + (key,)),
                                    f"'{key}' twice", "each key once")
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        return _SCALAR_LOADER.construct_object(node, deep=True)

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        """Line of the deepest known prefix of a pydantic error location."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), None)


_SCALAR_LOADER = yaml.SafeLoader("")


def _dotted(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def load_yaml(path: Path | str) -> tuple[Any, _Located]:
    """Read a YAML file safely; return its plain data and the line map. Raises FileError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileError(path, None, "", "no such file", "an existing YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FileError(path, None, "", f"unreadable file ({exc.__class__.__name__})",
                        "a UTF-8 YAML file") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise FileError(path, line, "", f"invalid YAML ({exc.problem})", "YAML syntax") from None
    except yaml.YAMLError as exc:
        raise FileError(path, None, "", f"invalid YAML ({exc})", "YAML syntax") from None
    located = _Located()
    if node is None:
        raise FileError(path, 1, "", "an empty file", "a YAML mapping")
    try:
        data = located.build(node, ())
    except FileError as exc:
        raise FileError(path, exc.line, exc.field, exc.found, exc.allowed) from None
    except yaml.YAMLError as exc:
        raise FileError(path, None, "", f"unsupported YAML ({exc})", "plain YAML data") from None
    return data, located


def _describe_found(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(model: type[ModelT], data: Any, located: _Located, path: Path | str) -> ModelT:
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
        raise FileError(path, located.line_of(loc), _dotted(loc), found, allowed) from None


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
