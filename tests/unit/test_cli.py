"""The ipsynergy command: one entry point for every job, locally and under spark-submit."""
import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

from jobs import STAGES, __version__, cli, submit

BIN = Path(sys.executable).parent


def test_help_lists_every_job_with_its_summary(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("check", *STAGES, "pipeline", "evaluate", "sql", "export", "mlflow-ui", "deploy"):
        line = next((l for l in out.splitlines() if l.strip().startswith(f"{name} ")), None)
        assert line and len(line.split(None, 1)[1]) > 20, f"{name} missing or without a summary in:\n{out}"
    # every command is a module with a main: nothing listed that cannot run
    for module in cli.COMMANDS.values():
        assert callable(importlib.import_module(f"jobs.{module}").main)


def test_version_is_the_installed_one(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ipsynergy {__version__}"
    assert importlib.metadata.version("ipsynergy") == __version__


def test_an_unknown_command_names_the_known_ones(capsys):
    assert cli.main(["refien"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'refien'" in err and "refine" in err


def test_the_console_script_runs_a_job_in_a_fresh_process():
    done = subprocess.run([str(BIN / "ipsynergy"), "refine", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--replay" in done.stdout  # refine's own options, not the dispatcher's


def test_spark_submit_entry_point_is_the_same_command():
    assert submit.main is cli.main


def test_each_kind_of_user_error_has_its_status_and_no_traceback(capsys, monkeypatch):
    """A job that stops on bad input prints one line naming the problem and the fix, and exits
    with its kind's status: 2 configuration, 3 missing input, 4 not enough data, 5 refused."""
    from core.errors import ConfigError, InputRejected, MissingInput, NotEnoughData

    monkeypatch.setattr("core.session.build_session", lambda settings: None)
    for error, status in ((ConfigError, 2), (MissingInput, 3), (NotEnoughData, 4), (InputRejected, 5)):
        def body(spark, settings, summary, error=error):
            raise error("silver.events not found: run ipsynergy refine first")

        assert cli.run_job("jobs.x", "", [], body) == status
        err = capsys.readouterr().err
        assert err.strip() == "jobs.x: silver.events not found: run ipsynergy refine first"
    # a bad --set is a configuration error too, before any work
    assert cli.run_job("jobs.x", "", ["--set", "spark.shufle_partitions=3"], body) == 2
    assert "spark.shufle_partitions" in capsys.readouterr().err
