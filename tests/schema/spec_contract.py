"""A small parser for the spec's SQL (spec_contract.sql): tables, columns, constraints, indexes.

It understands exactly the subset of PostgreSQL the spec uses, and fails loudly on anything else,
so a spec change cannot silently drop out of the contract test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

SPEC_SQL = Path(__file__).with_name("spec_contract.sql")

_TYPE = re.compile(
    r"^(BIGSERIAL|UUID|VARCHAR\(\d+\)|DECIMAL\(\d+,\d+\)|TIMESTAMPTZ|TEXT\[\]|TEXT|JSONB|INET|BYTEA|"
    r"BIGINT|INTEGER|BOOLEAN|DATE)(?=\s|$)(.*)$",
    re.S,
)


@dataclass
class SpecColumn:
    name: str
    type: str
    nullable: bool
    default: str | None
    references: str | None
    unique: bool
    check_values: list[str] | None
    generated: str | None


@dataclass
class SpecTable:
    name: str
    columns: list[SpecColumn] = field(default_factory=list)
    uniques: list[tuple[str, ...]] = field(default_factory=list)


@dataclass
class SpecIndex:
    name: str
    table: str
    columns: list[str]
    where: str | None


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def _split_top_level(body: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in body:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def _parse_column(item: str) -> SpecColumn:
    name, rest = item.split(None, 1)
    match = _TYPE.match(rest)
    if match is None:
        raise ValueError(f"spec column not understood: {item!r}")
    type_, tail = match.group(1), " ".join(match.group(2).split())
    default = None
    default_match = re.search(r"DEFAULT ('[^']*'|[\w.]+\(\)|[\w.]+)", tail)
    if default_match:
        default = default_match.group(1)
    references = None
    ref_match = re.search(r'REFERENCES "?(\w+)"?\(id\)', tail)
    if ref_match:
        references = ref_match.group(1)
    check_values = None
    check_match = re.search(r"CHECK \(\w+ IN \((.*?)\)\)", tail, re.S)
    if check_match:
        check_values = re.findall(r"'([^']*)'", check_match.group(1))
    generated = None
    gen_match = re.search(r"GENERATED ALWAYS AS \((.*?)\) STORED", tail)
    if gen_match:
        generated = gen_match.group(1)
    return SpecColumn(
        name=name,
        type=type_,
        nullable="NOT NULL" not in tail and "PRIMARY KEY" not in tail,
        default=default,
        references=references,
        unique=bool(re.search(r"\bUNIQUE\b", tail)),
        check_values=check_values,
        generated=generated,
    )


@cache
def spec_tables() -> dict[str, SpecTable]:
    sql = _strip_comments(SPEC_SQL.read_text())
    tables: dict[str, SpecTable] = {}
    for match in re.finditer(r"CREATE TABLE (\w+) \((.*?)\n\);", sql, re.S):
        table = SpecTable(match.group(1))
        for item in _split_top_level(match.group(2)):
            unique = re.match(r"UNIQUE\((.*)\)$", item)
            if unique:
                table.uniques.append(tuple(c.strip() for c in unique.group(1).split(",")))
            else:
                table.columns.append(_parse_column(item))
        tables[table.name] = table
    return tables


@cache
def spec_indexes() -> dict[str, SpecIndex]:
    sql = _strip_comments(SPEC_SQL.read_text())
    indexes = {}
    for match in re.finditer(r"CREATE INDEX (\w+) ON (\w+)\(([^)]*)\)(?: WHERE ([^;]+))?;", sql):
        columns = [" ".join(c.split()).lower() for c in match.group(3).split(",")]
        indexes[match.group(1)] = SpecIndex(match.group(1), match.group(2), columns, match.group(4))
    return indexes


@cache
def spec_seed_slugs() -> list[str]:
    sql = _strip_comments(SPEC_SQL.read_text())
    seed = re.search(r"INSERT INTO agent_vamn_routing .*? VALUES(.*?);", sql, re.S)
    assert seed is not None
    return re.findall(r"\('(\w+)',", seed.group(1))
