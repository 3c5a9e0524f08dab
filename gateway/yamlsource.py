"""YAML loading that remembers where every value came from, and ``${VAR}`` / ``${file:PATH}`` interpolation.

Config errors are reported as ``FILE:LINE path.to.key: message``; this module supplies the LINE.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]
_VAR = re.compile(r"\$\{file:([^}]+)\}|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}|\$\$")


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a config file."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """Raised with every issue found, so an admin can fix them all in one go."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class YamlDocument:
    """A parsed YAML file: its data and the line of every key and value in it."""

    file: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int | None:
        """The line of ``path``, or of its nearest ancestor that exists in the file."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    def issue(self, path: Path_, message: str) -> ConfigIssue:
        return ConfigIssue(self.file, self.line_of(path), dotted(path), message)


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            child = (*path, str(key))
            lines[child] = key_node.start_mark.line + 1
            out[str(key)] = _walk(value_node, child, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, (*path, index), lines) for index, item in enumerate(node.value)]
    loader = yaml.SafeLoader("")
    return loader.construct_object(node, deep=True)


def load_yaml(path: str | Path) -> YamlDocument:
    """Parse one YAML file; a syntax error becomes a ConfigError with its line."""
    text = Path(path).read_text(encoding="utf-8")
    return parse_yaml(text, str(path))


def parse_yaml(text: str, file: str) -> YamlDocument:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else None
        raise ConfigError([ConfigIssue(file, line, "", f"YAML syntax: {exc.problem}")]) from None
    lines: dict[Path_, int] = {}
    data = {} if node is None else _walk(node, (), lines)
    return YamlDocument(file, data, lines)


def interpolate(doc: YamlDocument, environ: Mapping[str, str] | None = None) -> list[ConfigIssue]:
    """Replace ``${VAR}``, ``${VAR:-default}`` and ``${file:PATH}`` in every string value, in place; ``$$`` is a
    literal ``$``.

    ``${file:/run/secrets/name}`` is the content of that file (Docker and Kubernetes secrets), without its final
    newline; a relative PATH is taken relative to the config file. Returns an issue for each variable that is unset
    and has no default, and for each file that cannot be read (named, its content never shown).
    """
    env = os.environ if environ is None else environ
    issues: list[ConfigIssue] = []

    def substitute(value: str, path: Path_) -> str:
        def one(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            if match.group(1) is not None:
                return read_secret_file(match.group(1), path)
            name, default = match.group(2), match.group(3)
            if name in env and env[name] != "":
                return env[name]
            if default is not None:
                return default
            issues.append(doc.issue(path, f"environment variable {name} is not set (use ${{{name}:-default}})"))
            return ""

        return _VAR.sub(one, value)

    def read_secret_file(name: str, path: Path_) -> str:
        file = Path(name)
        if not file.is_absolute():
            file = Path(doc.file).parent / file
        try:
            content = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            problem = "does not exist"
        except IsADirectoryError:
            problem = "is a directory"
        except PermissionError:
            problem = "cannot be read (permission denied)"
        except (OSError, UnicodeDecodeError) as exc:
            problem = f"cannot be read ({type(exc).__name__})"
        else:
            return content.removesuffix("\n").removesuffix("\r")
        issues.append(doc.issue(path, f"secret file {file} {problem}"))
        return ""

    def visit(value: Any, path: Path_) -> Any:
        if isinstance(value, dict):
            return {key: visit(item, (*path, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [visit(item, (*path, index)) for index, item in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            return substitute(value, path)
        return value

    doc.data = visit(doc.data, ())
    return issues
