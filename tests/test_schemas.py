"""The data model is one versioned module, and docs/data_model.md documents every column of it."""

import re
from pathlib import Path

import pyarrow as pa
import pytest

from adaptcot.common import schemas

DOC = (Path(__file__).parents[1] / "docs" / "data_model.md").read_text()


def _doc_columns(table: str) -> list[str]:
    section = DOC.split(f"## `{table}`", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE)


@pytest.mark.parametrize("name", list(schemas.ALL_TABLES))
def test_every_column_is_documented_in_order(name):
    assert _doc_columns(name) == schemas.ALL_TABLES[name].names


@pytest.mark.parametrize("name,schema", list(schemas.ALL_TABLES.items()))
def test_tables_carry_their_name_and_version(name, schema):
    assert schemas.schema_of(schema) == (name, schemas.SCHEMA_VERSION)


def test_levels_are_named_and_ranked_easiest_first():
    assert [lv.value for lv in schemas.LEVELS_EASIEST_FIRST][:1] == ["easy"]
    assert [lv.rank for lv in schemas.LEVELS_EASIEST_FIRST] == list(range(6))
    for level in schemas.Level:
        assert f"| {level.rank} | `{level.value}` |" in DOC


def test_stage_contract_checks_fail_loudly():
    t = pa.table({"question_id": ["a", "b"]})
    with pytest.raises(schemas.SchemaError, match="lacks column"):
        schemas.require_columns(t, ["question_id", "level"], "grade")
    with pytest.raises(schemas.SchemaError, match="duplicated"):
        schemas.require_same_rows(t, pa.table({"question_id": ["a", "a"]}), "question_id", "grade")
    with pytest.raises(schemas.SchemaError, match="1 row\\(s\\) lost"):
        schemas.require_same_rows(t, pa.table({"question_id": ["a"]}), "question_id", "grade")
    schemas.require_same_rows(t, pa.table({"question_id": ["b", "a"]}), "question_id", "grade")
