"""Safe YAML loading for job specs.

A spec is plain data, so the loader is PyYAML's ``SafeLoader`` (a subclass: the global loader
is never mutated) made stricter:

- duplicate keys are an error naming the key and both lines (PyYAML silently keeps the last);
- mapping keys must be strings (YAML 1.1 reads an unquoted ``on:``/``yes:`` key as a boolean);
- tags that need code (``!!python/object/apply:...``) and unknown local tags are refused
  before anything is constructed, and so is ``!!set``: a set has no order, so a ``choice``
  over one would draw differently in every process (hash randomisation), giving other trial
  ids on every invocation and breaking resume;
- alias bombs ("billion laughs") are refused while composing: at most :data:`MAX_ALIASES` alias
  references, at most :data:`MAX_NODES` nodes once aliases are expanded, nesting at most
  :data:`MAX_DEPTH` deep, and a file at most :data:`MAX_SPEC_BYTES` long;
- ``1e-4`` is a float (YAML 1.1 needs a dot, ``1.0e-4``, and would give the string ``"1e-4"``).

Every failure is a :class:`~orchestrator.errors.SpecError` whose problems render as
``FILE: line N: message``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, NoReturn, Union

import yaml
import yaml.reader
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from orchestrator.errors import Problem, SpecError
from rnn.paths import not_a_file

MAX_SPEC_BYTES = 1_000_000
MAX_ALIASES = 100
MAX_NODES = 100_000
MAX_DEPTH = 64

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_YAML_TAG_PREFIX = "tag:yaml.org,2002:"

# YAML 1.1's float pattern plus exponent-only forms (1e-4, 2E+3) and an optional exponent sign.
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)[eE][-+]?[0-9]+
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Refusal(Exception):
    """Raised inside the loader; turned into a ``line N: message`` problem."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _line(node_or_mark: Any) -> int | None:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    return mark.line + 1 if mark is not None else None


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_YAML_TAG_PREFIX):] if tag.startswith(_YAML_TAG_PREFIX) else tag


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader with duplicate-key, key-type, tag and alias-bomb checks."""

    # A class attribute on the subclass only: SafeLoader's own resolvers stay untouched.
    yaml_implicit_resolvers = {
        first: [(tag, _FLOAT_RE if tag == _FLOAT_TAG else regexp) for tag, regexp in resolvers]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refusal(
                    _line(self.peek_event()),
                    f"more than {MAX_ALIASES} alias references (*name); a spec does not need "
                    "that many, and expanding them could exhaust memory",
                )
        else:
            self._nodes += 1
            if self._nodes > MAX_NODES:
                raise _Refusal(_line(self.peek_event()), f"more than {MAX_NODES} YAML nodes")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refusal(_line(self.peek_event()), f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            first_line: dict[str, int | None] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:  # `<<: *base` merges are allowed
                    continue
                if not isinstance(key_node, ScalarNode):
                    raise _Refusal(_line(key_node), f"mapping keys must be strings (got a {key_node.id})")
                if key_node.tag != _STR_TAG:  # `on:`, `yes:`, `1:`, `null:` resolve to non-strings
                    raise _Refusal(
                        _line(key_node),
                        f"mapping keys must be strings (got {key_node.value}, read as "
                        f"{_show_tag(key_node.tag)}); quote it: '{key_node.value}':",
                    )
                key = key_node.value
                if key in first_line:
                    raise _Refusal(
                        _line(key_node),
                        f"duplicate key {key!r} (first defined on line {first_line[key]}); "
                        "each key may appear once per mapping",
                    )
                first_line[key] = _line(key_node)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (_Refusal, yaml.YAMLError):
            raise
        except (ValueError, TypeError, OverflowError) as e:  # e.g. `!!int abc`, bad `!!binary`
            raise _Refusal(_line(node), f"cannot read this value as {_show_tag(node.tag)}: {e}") from e

    def construct_undefined(self, node: Node) -> NoReturn:
        raise _Refusal(
            _line(node),
            f"tag {_show_tag(node.tag)} is not allowed: a spec is plain data "
            "(mappings, lists, strings, numbers, booleans, null)",
        )

    def construct_unordered_set(self, node: Node) -> NoReturn:
        raise _Refusal(
            _line(node),
            "!!set is not allowed: a set has no order, so sweep choices over it would differ from run "
            "to run (and resume would not find finished trials); write a list: [a, b]",
        )


_SpecLoader.add_constructor(None, _SpecLoader.construct_undefined)
_SpecLoader.add_constructor("tag:yaml.org,2002:set", _SpecLoader.construct_unordered_set)


def _expanded_size(root: Node) -> int:
    """Nodes in the document once every alias is expanded; refuses cycles and oversize trees.

    Composed nodes form a DAG (an alias is the same node object), so memoising by identity
    keeps this linear in the file's size even when the expansion would be astronomical.
    """
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in memo:
            return memo[key]
        if key in active:
            raise _Refusal(_line(node), "recursive alias: a node contains itself")
        active.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        if total > MAX_NODES:
            raise _Refusal(
                _line(node),
                f"aliases expand to more than {MAX_NODES} nodes (an alias bomb?); write the values out",
            )
        memo[key] = total
        return total

    return size(root)


def _fail(source: str, message: str, line: int | None = None) -> NoReturn:
    raise SpecError([Problem("", message, line=line)], file=source)


def decode_spec(data: bytes, source: str = "<string>") -> str:
    """A spec file's bytes as text (UTF-8, a byte-order mark tolerated).

    Raises:
        SpecError: larger than :data:`MAX_SPEC_BYTES`, or not UTF-8 (naming the line).
    """
    if len(data) > MAX_SPEC_BYTES:
        _fail(source, f"file is larger than {MAX_SPEC_BYTES} bytes; a spec is a short text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        _fail(
            source,
            f"not valid UTF-8 at byte offset {e.start} (byte 0x{data[e.start]:02x}); save the file as UTF-8",
            data.count(b"\n", 0, e.start) + 1,
        )


def parse_yaml(data: Union[bytes, str], source: str = "<string>") -> dict[str, Any]:
    """Parse one spec document; returns its top-level mapping.

    Raises:
        SpecError: not UTF-8, not YAML, a refused construct, empty, or not a mapping at the top.
    """
    text = decode_spec(data, source) if isinstance(data, bytes) else data
    try:
        loader = _SpecLoader(text)
    except yaml.reader.ReaderError as e:  # control characters, checked before parsing starts
        line = text.count("\n", 0, e.position) + 1
        _fail(source, f"character #x{e.character:04x} is not allowed in YAML; remove it", line)
    try:
        node = loader.get_single_node()
        if node is not None:
            _expanded_size(node)
            document = loader.construct_document(node)
        else:
            document = None
    except _Refusal as e:
        _fail(source, e.message, e.line)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        message = e.problem or e.context or "invalid YAML"
        if e.context and e.problem:
            joined = e.problem.startswith("but ")  # "expected a single document, but found another"
            message = f"{e.context}, {e.problem}" if joined else f"{e.problem} ({e.context})"
        _fail(source, message, _line(mark))
    except yaml.YAMLError as e:  # ReaderError (control characters) and friends carry no mark
        _fail(source, f"invalid YAML: {e}")
    except RecursionError:  # defensive: nesting is bounded above, this should not happen
        _fail(source, "YAML nested too deeply")
    finally:
        loader.dispose()
    if document is None:
        _fail(source, "the file is empty; a spec is a mapping with at least name and kind")
    if not isinstance(document, dict):
        kind = type(document).__name__
        _fail(source, f"the top level must be a mapping of keys (name, kind, data, ...), got a {kind}", 1)
    return document


def read_spec_bytes(path: Union[str, os.PathLike[str]]) -> bytes:
    """A spec file's bytes (at most one more than :data:`MAX_SPEC_BYTES`, so an oversize file is
    refused without reading it all).

    Raises:
        SpecError: missing, a directory, not a regular file, or unreadable.
    """
    source = str(path)
    p = Path(path)
    try:
        what = not_a_file(p)
        if what is not None:
            _fail(source, f"cannot read the spec: {what}")
        with p.open("rb") as f:
            return f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        _fail(source, f"cannot read the spec: {e.strerror or e}")


def load_yaml(path: Union[str, os.PathLike[str]]) -> dict[str, Any]:
    """Read and parse a spec file (see :func:`parse_yaml`); unreadable files raise SpecError too."""
    return parse_yaml(read_spec_bytes(path), str(path))
