"""The ``ipsynergy`` command, and what every job entry point shares: arguments, logging,
settings, session, summary.

``ipsynergy JOB [options]`` runs one job; ``python -m jobs.JOB`` and, on a cluster,
``spark-submit ... dist/submit.py JOB`` take the same arguments. A job module defines
``execute(spark, settings, summary, **options)`` (the work) and ``main(argv=None)`` that calls
:func:`run_job`.
"""
from __future__ import annotations

import argparse
import ast
import datetime as dt
import importlib
import importlib.util
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from core.errors import UserError
from core.settings import load_settings
from jobs import STAGES, __version__

log = logging.getLogger("ipsynergy")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def job_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="local",
                        help="configuration overlay conf/<env>.yaml over conf/base.yaml (local, cluster)")
    parser.add_argument("--as-of", type=_date, default=None, metavar="YYYY-MM-DD",
                        help="logical run date (default: as_of in the configuration)")
    parser.add_argument("--platforms", default=None, metavar="DIR",
                        help="folder of your platform mappings, one <platform>.yaml each (default: platforms_dir "
                             "in the configuration, else the demo mappings in conf/platforms)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a configuration value, e.g. --set lake.root=/data/lake (repeatable)")
    return parser


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The --set assignments, with --platforms as one more."""
    return [*args.set, *([f"platforms_dir={args.platforms}"] if args.platforms else [])]


@dataclass
class Summary:
    """The closing lines of a job: counts, table versions, elapsed time."""

    job: str
    started: float = field(default_factory=time.monotonic)
    counts: dict[str, int] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # What the job left out and why (also among the notes): it shapes what a run produced.
    skipped: list[str] = field(default_factory=list)
    # The job's results as data, for a caller (the pipeline) to use without parsing notes.
    results: dict = field(default_factory=dict)

    def count(self, name: str, value: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + int(value)

    def table(self, qualified: str, version: int) -> None:
        self.tables[qualified] = version

    def note(self, line: str) -> None:
        self.notes.append(line)

    def skip(self, line: str) -> None:
        """A note that says what was skipped or left out, and why."""
        self.notes.append(line)
        self.skipped.append(line)

    def result(self, name: str, value) -> None:
        self.results[name] = value

    def render(self) -> str:
        lines = [f"== {self.job} summary =="]
        lines += [f"  {k:<28} {v:>12,}" for k, v in self.counts.items()]
        lines += [f"  table {k:<22} version {v}" for k, v in self.tables.items()]
        lines += [f"  {n}" for n in self.notes]
        lines.append(f"  elapsed {time.monotonic() - self.started:.1f}s")
        return "\n".join(lines)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("py4j", "py4j.clientserver", "urllib3", "alembic", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_job(prog: str, description: str, argv: list[str] | None,
            body: Callable[..., Summary], add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
            options: Callable[[argparse.Namespace], dict] | None = None) -> int:
    """Parse arguments, load settings once, build the session, run ``body``, print its summary."""
    parser = job_parser(prog, description)
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging()
    from core.session import build_session

    try:
        settings = load_settings(args.env, overrides_of(args), args.as_of)
        spark = build_session(settings)
        summary = body(spark, settings, Summary(prog), **(options(args) if options else {}))
    except UserError as err:  # the input or settings: say which and how to fix it, no traceback
        print(f"{prog}: {err}", file=sys.stderr)
        return err.exit_code
    text = summary.render()
    print(text)
    log.info("%s finished", prog)
    return 0



def as_of_given(args: argparse.Namespace) -> bool:
    """Whether the run date was set (--as-of, or --set as_of=...) rather than left to the default."""
    return args.as_of is not None or any(a.strip().startswith("as_of=") for a in args.set)


def input_option(parser: argparse.ArgumentParser) -> None:
    """``--input DIR``: the raw exports root, one folder per platform."""
    parser.add_argument("--input", default=None,
                        help="raw exports root, one folder per platform (default: lake.raw, or <lake root>/raw)")


def input_value(args: argparse.Namespace) -> dict:
    return {"input_root": args.input}


# -- the ipsynergy command ----------------------------------------------------
# command -> module under jobs/; each module's docstring gives its line in --help.
COMMANDS = {"check": "check", **{stage: stage for stage in STAGES}, "pipeline": "pipeline", "evaluate": "evaluate",
            "sql": "sql", "export": "export", "mlflow-ui": "mlflow_ui", "deploy": "deploy"}


def _summary_line(module: str) -> str:
    """The first line of a job module's docstring, read without importing it (fast --help)."""
    spec = importlib.util.find_spec(f"jobs.{module}")
    source = spec.loader.get_source(spec.name) if spec and spec.loader else None
    doc = ast.get_docstring(ast.parse(source)) if source else None
    return (doc or "").strip().splitlines()[0] if doc else ""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"ipsynergy {__version__}: cross-platform logs to Delta Lake, personas, revenue models and synergy.",
             "", "usage: ipsynergy COMMAND [options]     (ipsynergy COMMAND --help for its options)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {_summary_line(module)}" for name, module in COMMANDS.items()]
    lines += ["", "The same commands run on a cluster as: spark-submit [spark options] "
              "--py-files dist/ipsynergy.zip dist/submit.py COMMAND [options] (docs/cluster.md)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``ipsynergy COMMAND [options]``: run one job (also dist/submit.py's entry under spark-submit)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--version"], ["-V"]):
        print(f"ipsynergy {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"ipsynergy: unknown command {argv[0]!r}; expected one of: {', '.join(COMMANDS)} "
              f"(ipsynergy --help lists them)", file=sys.stderr)
        return 2
    try:
        return importlib.import_module(f"jobs.{COMMANDS[argv[0]]}").main(argv[1:])
    except UserError as err:  # raised outside a job's own handling (deploy, mlflow-ui)
        print(f"ipsynergy {argv[0]}: {err}", file=sys.stderr)
        return err.exit_code
