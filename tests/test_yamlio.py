"""Safe YAML loading: duplicate keys, tags, alias bombs, encodings and the float fix."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import SpecError
from orchestrator.spec.yamlio import MAX_ALIASES, MAX_SPEC_BYTES, load_yaml, parse_yaml


def refused(text: str | bytes) -> str:
    with pytest.raises(SpecError) as info:
        parse_yaml(text, "f.yaml")
    lines = info.value.lines()
    assert len(lines) == 1
    return lines[0]


def billion_laughs(levels: int = 9) -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    names = "abcdefghijklmnop"
    for prev, name in pairwise(names[:levels]):
        text += f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
    return text


def test_plain_mapping_loads() -> None:
    assert parse_yaml("name: x\nmodel: {cell: gru, hidden_size: 64}\nlist: [1, 2.5, true, null]\n") == {
        "name": "x", "model": {"cell": "gru", "hidden_size": 64}, "list": [1, 2.5, True, None]}


def test_exponent_without_dot_is_a_float_and_global_loader_is_untouched() -> None:
    data = parse_yaml("a: 1e-4\nb: 2E+3\nc: 1.0e4\nd: 10\ne: 0x1e\nf: '1e-4'\n")
    assert data == {"a": 1e-4, "b": 2000.0, "c": 1e4, "d": 10, "e": 30, "f": "1e-4"}
    assert isinstance(data["d"], int)
    assert yaml.safe_load("a: 1e-4") == {"a": "1e-4"}  # PyYAML's own SafeLoader keeps YAML 1.1


def test_duplicate_top_level_key_names_key_and_lines() -> None:
    assert refused("name: a\nkind: train\nname: b\n") == (
        "f.yaml: line 3: duplicate key 'name' (first defined on line 1); each key may appear once per mapping")


def test_duplicate_nested_key() -> None:
    text = "name: a\nmodel:\n  cell: lstm\n  cell: gru\n"
    assert "line 4: duplicate key 'cell' (first defined on line 3)" in refused(text)


def test_merge_keys_may_override() -> None:
    assert parse_yaml("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n")["d"] == {"x": 1, "y": 3}


def test_python_tag_is_refused_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    line = refused('name: x\nevil: !!python/object/apply:builtins.open ["pwned.txt", "w"]\n')
    assert line == ("f.yaml: line 2: tag !!python/object/apply:builtins.open is not allowed: a spec is plain data "
                    "(mappings, lists, strings, numbers, booleans, null)")
    assert not (tmp_path / "pwned.txt").exists()


def test_unknown_local_tag_is_refused() -> None:
    assert "tag !secret is not allowed" in refused("a: !secret x\n")


@pytest.mark.parametrize("text", ["v: !!set {a, b, c}\n", "v: !!set\n  ? a\n  ? b\n"])
def test_a_set_is_refused_because_it_has_no_order(text: str) -> None:
    line = refused(text)
    assert line.startswith("f.yaml: line 1: !!set is not allowed: a set has no order") and "write a list" in line


def test_question_mark_keys_without_the_tag_are_a_plain_mapping() -> None:
    assert parse_yaml("v:\n  ? a\n  ? b\n") == {"v": {"a": None, "b": None}}


def test_bad_value_for_explicit_tag_is_a_clean_error() -> None:
    assert "line 1: cannot read this value as !!int" in refused("a: !!int abc\n")


@pytest.mark.parametrize("levels", [9, 12])
def test_billion_laughs_is_refused_not_expanded(levels: int) -> None:
    # Refused on the alias count while composing, before anything is expanded (a hang or an
    # exhausted memory would trip pytest-timeout and the machine, not this assertion).
    line = refused(billion_laughs(levels))
    assert "alias" in line


def test_too_many_aliases_are_refused() -> None:
    line = refused("a: &a 1\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n")
    assert f"more than {MAX_ALIASES} alias references" in line


def test_a_few_aliases_are_fine() -> None:
    assert parse_yaml("a: &v [1, 2]\nb: *v\n") == {"a": [1, 2], "b": [1, 2]}


def test_recursive_alias_is_refused() -> None:
    assert "recursive alias" in refused("a: &a [1, *a]\n")


def test_deep_nesting_is_refused() -> None:
    assert "nested more than" in refused("a: " + "[" * 500 + "]" * 500 + "\n")


def test_non_utf8_names_the_byte_offset() -> None:
    assert refused(b"name: ok\nnote: caf\xe9\n") == (
        "f.yaml: line 2: not valid UTF-8 at byte offset 18 (byte 0xe9); save the file as UTF-8")


def test_utf8_with_bom_and_non_ascii_text() -> None:
    assert parse_yaml("\ufeffname: café\n".encode()) == {"name": "café"}


def test_control_character_is_refused_with_its_line() -> None:
    assert refused("a: 1\nb: x\x00y\n") == "f.yaml: line 2: character #x0000 is not allowed in YAML; remove it"


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "---\n"])
def test_empty_document_is_refused(text: str) -> None:
    assert "the file is empty" in refused(text)


@pytest.mark.parametrize("text,kind", [("- a\n", "list"), ("hello\n", "str"), ("3\n", "int")])
def test_root_must_be_a_mapping(text: str, kind: str) -> None:
    assert f"top level must be a mapping of keys (name, kind, data, ...), got a {kind}" in refused(text)


def test_two_documents_are_refused() -> None:
    assert "expected a single document" in refused("a: 1\n---\nb: 2\n")


def test_syntax_error_names_the_line() -> None:
    assert refused("a: 1\nb: [1, 2\nc: 3\n").startswith("f.yaml: line 3: ")


@pytest.mark.parametrize("key", ["on", "yes", "1", "null", "[a]"])
def test_keys_must_be_strings(key: str) -> None:
    assert "mapping keys must be strings" in refused(f"? {key}\n: 1\n")


def test_oversized_file_is_refused() -> None:
    assert "larger than" in refused(b"a: " + b"x" * MAX_SPEC_BYTES)


def test_load_yaml_reads_files_and_reports_unreadable_ones(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\n")
    assert load_yaml(spec) == {"name": "x"}
    with pytest.raises(SpecError) as info:
        load_yaml(tmp_path / "missing.yaml")
    assert str(info.value) == f"{tmp_path / 'missing.yaml'}: cannot read the spec: no such file"
    with pytest.raises(SpecError) as info:
        load_yaml(tmp_path)
    assert "a directory, not a file" in str(info.value)
