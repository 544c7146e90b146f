"""Typed dataclass configs <-> JSON, with one-line errors for unknown keys and bad values."""
from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from pathlib import Path

from .fs import atomic_write_bytes


class ConfigError(ValueError):
    pass



def short(value, limit: int = 60) -> str:
    """repr(value) for a one-line message: escapes keep it one line, and it is cut after `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."

def to_dict(cfg) -> dict:
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def _coerce(tp, value, where: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for tp_ in options[1:]:  # a value of a later member (e.g. "auto" of int | str) is kept as it is
            if isinstance(tp_, type) and isinstance(value, tp_) and not isinstance(value, bool):
                return value
        return _coerce(options[0], value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {short(value)}")
        seq = [_coerce(args[0], v, where) for v in value] if args else list(value)
        return tuple(seq) if origin is tuple else seq
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{where}: {short(value)} is not one of {[e.value for e in tp]}") from None
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {short(value)}")
    return value


def from_dict(cls, data: dict, where: str = "config", base=None):
    """cls from a JSON object; keys it leaves out keep base's values (default: cls's own defaults).

    A nested dataclass field starts from its field's default (a default_factory may set other defaults than its
    class, e.g. a judge's optimiser), so a config names only what differs.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {short(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key {short(sorted(unknown)[0])} (known: {', '.join(sorted(fields))})")
    values = {}
    for k, v in data.items():
        tp, f = hints[k], fields[k]
        if dataclasses.is_dataclass(tp) and f.default_factory is not dataclasses.MISSING:
            nested_base = getattr(base, k) if base is not None else f.default_factory()
            values[k] = from_dict(tp, v, f"{where}.{k}", nested_base)
        else:
            values[k] = _coerce(tp, v, f"{where}.{k}")
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def save_json(cfg, path: Path) -> None:
    atomic_write_bytes(Path(path), (json.dumps(to_dict(cfg), indent=2) + "\n").encode())


MAX_JSON = 16 * 2 ** 20  # bytes of a config file; a larger one is refused unread


def read_json(path: Path) -> dict:
    """A JSON file's value; one ConfigError line for a missing, oversized, undecodable, malformed or too deeply
    nested file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"missing file '{path}'")
    if path.stat().st_size > MAX_JSON:
        raise ConfigError(f"'{path}' is {path.stat().st_size:,} bytes, over the {MAX_JSON // 2 ** 20} MiB a config may be")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"corrupt JSON in '{path}': not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"corrupt JSON in '{path}': {e}") from None
    except RecursionError:
        raise ConfigError(f"corrupt JSON in '{path}': nested too deeply") from None


def load_json(cls, path: Path):
    return from_dict(cls, read_json(path), Path(path).name)
