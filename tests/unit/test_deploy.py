"""jobs.deploy's cluster start-up, without starting anything: the workers' cleanup settings and
the --cleanup-after check. The real cluster is exercised by tests/cluster (make test-slow)."""
from __future__ import annotations

import pytest

from jobs import deploy


def _started(monkeypatch, tmp_path, **kwargs) -> dict[str, dict]:
    started: dict[str, dict] = {}

    def fake_start(name, argv, state, env):
        started[name] = {"argv": argv, "env": env}
        return 0

    monkeypatch.setattr(deploy, "_start", fake_start)
    monkeypatch.setattr(deploy, "_wait", lambda *a, **k: None)
    deploy.cluster_up(tmp_path, workers=2, **kwargs)
    return started


def test_workers_clean_up_finished_applications_and_keep_the_users_options(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARK_WORKER_OPTS", "-Dspark.worker.ui.retainedExecutors=5")
    started = _started(monkeypatch, tmp_path, cleanup_after=600)
    assert set(started) == {"master", "worker-1", "worker-2", "mlflow"}
    opts = started["worker-1"]["env"]["SPARK_WORKER_OPTS"].split()
    assert opts == ["-Dspark.worker.ui.retainedExecutors=5", "-Dspark.worker.cleanup.enabled=true",
                    "-Dspark.worker.cleanup.interval=60", "-Dspark.worker.cleanup.appDataTtl=600"]


def test_a_short_cleanup_delay_is_also_the_interval(monkeypatch, tmp_path):
    monkeypatch.delenv("SPARK_WORKER_OPTS", raising=False)
    opts = _started(monkeypatch, tmp_path, cleanup_after=10)["worker-2"]["env"]["SPARK_WORKER_OPTS"]
    assert opts == ("-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.interval=10 "
                    "-Dspark.worker.cleanup.appDataTtl=10")


@pytest.mark.parametrize("value", ["0", "-5", "ten"])
def test_cleanup_after_must_be_a_positive_number_of_seconds(value, capsys):
    with pytest.raises(SystemExit) as stop:
        deploy.main(["cluster-up", "--cleanup-after", value])
    assert stop.value.code == 2
    assert f"argument --cleanup-after: {value!r} is not a whole number of seconds" in capsys.readouterr().err


def test_submit_runs_spark_submit_with_the_installed_spark(monkeypatch, tmp_path):
    """`ipsynergy deploy submit JOB`: the line submit-command prints, run with SPARK_HOME set to the
    installed pyspark's Spark, so an unactivated virtualenv works (the system python3 that
    spark-submit's own lookup would run has no pyspark)."""
    (tmp_path / "jars").mkdir()
    (tmp_path / "jars" / "delta.jar").write_text("")
    monkeypatch.setattr(deploy, "DIST", tmp_path)
    monkeypatch.setattr(deploy.submit_argv, "__defaults__", (tmp_path, None, None))
    monkeypatch.delenv("SPARK_HOME", raising=False)
    ran = {}
    monkeypatch.setattr(deploy.os, "execv", lambda path, argv: ran.update(path=path, argv=argv))
    assert deploy.main(["submit", "--master", "spark://h:7077", "aggregate", "--as-of", "2026-06-30"]) == 0
    assert ran["path"].endswith("/bin/spark-submit") and ran["argv"][0] == ran["path"]
    assert ran["argv"][ran["argv"].index("--master") + 1] == "spark://h:7077"
    assert ran["argv"][-4:] == [str(tmp_path / "submit.py"), "aggregate", "--as-of", "2026-06-30"]
    assert deploy.os.environ["SPARK_HOME"] == str(deploy.spark_home())


def test_every_packaged_folder_of_code_is_a_regular_package():
    """ipsynergy.zip reaches the driver and executors through zipimport, which cannot import a
    namespace package (a folder without __init__.py): the cluster run once failed with
    "No module named 'core'" while every local run passed."""
    for top in deploy.CODE:
        for folder in [deploy.PROJECT_ROOT / top, *(deploy.PROJECT_ROOT / top).rglob("*")]:
            if folder.is_dir() and "__pycache__" not in folder.parts and any(folder.glob("*.py")):
                assert (folder / "__init__.py").is_file(), f"{folder.relative_to(deploy.PROJECT_ROOT)} has no __init__.py"
