"""Query the lake with Spark SQL: one query, or a prompt; the tables are <layer>.<name>.

    ipsynergy sql "select platform, count(*) from silver.events group by platform"
    ipsynergy sql                      (a prompt: end a statement with ;, quit or Ctrl-D to leave)

Every table of the lake (--set lake.root=...) is named <layer>.<name>: bronze.events_raw,
silver.events, gold.synergy_scores ... (docs/tables.md; `show tables in gold` lists a layer).
The result is printed as a table, at most --limit rows, each value cut at 60 characters. Only
statements that read are run (SELECT, WITH, FROM, VALUES, TABLE, SHOW, DESCRIBE, EXPLAIN): the
jobs write the lake, so that its idempotence and its checks hold.
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from decimal import Decimal

from pyspark.errors import AnalysisException, ParseException, PySparkException
from pyspark.sql import DataFrame, Row, SparkSession

from core.errors import InputRejected, MissingInput, UserError
from core.settings import Settings
from core.tables import ALL_TABLES
from jobs.cli import Summary, run_job

DEFAULT_LIMIT = 50
CELL_WIDTH = 60
# First words of the statements that only read; anything else (INSERT, DELETE, DROP, ...) is refused.
READ_ONLY = ("select", "with", "from", "values", "table", "show", "describe", "desc", "explain")
PROMPT, CONTINUATION = "sql> ", "  -> "


def cell(value) -> str:
    """A value as Spark's show() writes it (NULL, [a, b], {k -> v}), cut at CELL_WIDTH."""
    if value is None:
        text = "NULL"
    elif isinstance(value, Row):
        text = "{" + ", ".join(cell(v) for v in value) + "}"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{cell(k)} -> {cell(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(cell(v) for v in value) + "]"
    elif isinstance(value, dt.datetime):
        text = value.isoformat(sep=" ")
    elif isinstance(value, (bytes, bytearray)):
        text = "0x" + bytes(value).hex()
    else:
        text = str(value).replace("\n", "\\n")  # one line per row
    return text if len(text) <= CELL_WIDTH else text[:CELL_WIDTH - 3] + "..."


def render(columns: list[str], rows: list[Row]) -> str:
    """A text table: header, rule, one line per row; numbers right-aligned."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(isinstance(r[i], (int, float, Decimal)) and not isinstance(r[i], bool)
                                  for r in rows if r[i] is not None) for i in range(len(columns))]

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if num else v.ljust(w)
                                 for v, w, num in zip(values, widths, numeric)) + " |"

    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    return "\n".join([rule, line(columns), rule, *(line(r) for r in cells), rule])


def _tables_named(spark: SparkSession) -> list[str]:
    layers = dict.fromkeys(t.layer for t in ALL_TABLES)
    return [f"{layer}.{t.name}" for layer in layers if spark.catalog.databaseExists(layer)
            for t in spark.catalog.listTables(layer) if not t.isTemporary]


def run_statement(spark: SparkSession, settings: Settings, statement: str, limit: int) -> tuple[str, int]:
    """Run one read-only statement; returns (the printed table, rows shown)."""
    text = statement.strip().rstrip(";").strip()
    word = re.match(r"(?:\s*--[^\n]*\n)*\s*([A-Za-z]*)", text)  # after any leading -- comment lines
    first = word.group(1).lower() if word else ""
    if first not in READ_ONLY:
        raise InputRejected(f"'{first.upper() or statement}' is not run here: ipsynergy sql only reads "
                            f"(statements starting with {', '.join(w.upper() for w in READ_ONLY)}); "
                            f"the jobs write the lake")
    try:
        df: DataFrame = spark.sql(text)
        rows = df.limit(limit + 1).collect()  # one more than shown: whether there are more
    except AnalysisException as err:
        message = str(err).strip().splitlines()[0]
        if err.getCondition() == "TABLE_OR_VIEW_NOT_FOUND":
            named = _tables_named(spark)
            raise MissingInput(f"{message} The lake at {settings.lake_root} has "
                               + (", ".join(named) if named else "no table yet: run the pipeline first")) from None
        if isinstance(err, ParseException):
            raise UserError(f"the statement does not parse: {message}") from None
        raise UserError(message) from None
    except PySparkException as err:  # the query failed as it ran (a bad cast, a division by zero)
        raise UserError(str(err).strip().splitlines()[0]) from None
    if first == "explain":  # the plan is one multi-line text: as it is, not in a cell
        return "\n".join(str(r[0]) for r in rows), len(rows)
    shown = rows[:limit]
    out = render(df.columns, shown)
    if len(rows) > limit:
        out += f"\nonly the first {limit} rows shown (--limit)"
    return out, len(shown)


def _read_line(stream, prompt: str | None) -> str:
    """One line of input, '' at its end. At a terminal through input(): line editing and history."""
    if prompt is None:
        return stream.readline()
    try:
        return input(prompt) + "\n"
    except EOFError:  # Ctrl-D
        print()
        return ""


def _statements(stream, interactive: bool):
    """The statements typed at the prompt: lines gathered up to one ending with ';'."""
    if interactive:
        import readline  # noqa: F401 - input() edits lines and keeps a history once it is loaded
    lines: list[str] = []
    while True:
        try:
            line = _read_line(stream, (CONTINUATION if lines else PROMPT) if interactive else None)
        except KeyboardInterrupt:  # Ctrl-C drops the statement being typed, as in psql
            print()
            lines = []
            continue
        if not line:
            if "".join(lines).strip():
                yield "\n".join(lines)
            return
        if not lines and line.strip().rstrip(";").lower() in ("quit", "exit"):
            return
        if not lines and not line.strip():
            continue
        lines.append(line.rstrip("\n"))
        if line.rstrip().endswith(";"):
            yield "\n".join(lines)
            lines = []


def execute(spark: SparkSession, settings: Settings, summary: Summary, query: str | None = None,
            limit: int = DEFAULT_LIMIT, stream=None) -> Summary:
    if query is not None:
        out, shown = run_statement(spark, settings, query, limit)
        print(out)
        summary.count("rows shown", shown)
        return summary
    stream = stream or sys.stdin
    interactive = stream is sys.stdin and stream.isatty()
    if interactive:
        print(f"ipsynergy sql on {settings.lake_root}: {', '.join(_tables_named(spark)) or 'no tables yet'}")
    for statement in _statements(stream, interactive):
        if not statement.strip().rstrip(";").strip():
            continue
        try:
            out, shown = run_statement(spark, settings, statement, limit)
        except UserError as err:  # the prompt goes on after a mistake
            print(f"error: {err}", file=sys.stderr)
            continue
        print(out)
        summary.count("statements", 1)
        summary.count("rows shown", shown)
    return summary


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of rows of 1 or more, got {text!r}")
    return int(text)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", nargs="?", default=None,
                        help="the SQL query; without it, a prompt reads statements ending with ;")
    parser.add_argument("--limit", type=_positive, default=DEFAULT_LIMIT,
                        help=f"rows printed at most per statement (default {DEFAULT_LIMIT})")


def main(argv: list[str] | None = None) -> int:
    return run_job("jobs.sql", __doc__, argv, execute, add_arguments=_arguments,
                   options=lambda a: {"query": a.query, "limit": a.limit})


if __name__ == "__main__":
    sys.exit(main())
