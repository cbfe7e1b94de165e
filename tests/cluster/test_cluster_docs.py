"""The README's cluster block, run as written: `make package`, `make cluster-up`, one
`ipsynergy deploy submit` line, `make cluster-down`, taken from the README's "Running on a
cluster" (and from docs/cluster.md, which repeats it) and run line by line in fresh bash
processes from the project root, with .venv not activated, as a new user would paste them.
Each line must exit 0, the job must have run on the cluster and written what it says, and
cluster-down must leave nothing running.

The block writes where a user's run would (lake-cluster/, .cache/cluster/, the default ports):
an existing lake-cluster/ or .cache/cluster/ is moved aside and put back after, and busy ports
stop the test before anything starts. Run by `make test-slow` (which builds dist/ first, so the
block's `make package` only refreshes the code zip)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT
from jobs import deploy
from jobs.generate import STAMP

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

MARKER = "<!-- tested: tests/cluster/test_cluster_docs.py"
# make cluster-up's defaults: the block's submit line names the MLflow port, and a service
# already on any of them would be talked to instead of the block's cluster.
PORTS = {"master": 7077, "master UI": 8080, "MLflow": 5000}
LAKE = PROJECT_ROOT / "lake-cluster"  # the block's --set lake.root="$PWD/lake-cluster"
# Generous caps, for a loaded machine: make package rebuilds the 3 GB archive when the
# packages changed; the submission includes two executors unpacking it.
TIMEOUT = {"make package": 900, "make cluster-up": 300, "make cluster-down": 120}
SUBMIT_TIMEOUT = 900
# What a user's shell would not have, or what would change what the lines do: an activated
# .venv, Spark or ipsynergy overrides, and the variables of an outer make (make test-slow
# ARGS=... passes ARGS down to the block's `make cluster-up` through MAKEFLAGS).
NOT_INHERITED = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "SPARK_HOME", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON",
                 "IPSYNERGY_LAKE_ROOT", "IPSYNERGY_CONF_DIR", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "ARGS")


def section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def marked_block(text: str, where: str) -> str:
    """The ```bash block right under the one tested-marker comment of ``text``."""
    assert text.count(MARKER) == 1, f"{where}: expected one '{MARKER} ...' comment above the cluster block"
    found = re.search(re.escape(MARKER) + r"[^\n]*-->\n```bash\n(.*?)```", text, re.S)
    assert found, f"{where}: the marker comment must be right above a ```bash block"
    return found[1]


def commands(block: str) -> list[str]:
    """The block's commands, a line continued with a trailing backslash kept whole."""
    lines = re.split(r"(?<!\\)\n", block.strip())
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def user_env() -> dict[str, str]:
    venv_bin = (PROJECT_ROOT / ".venv" / "bin").resolve()
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != venv_bin)
    return env


def run(command: str, timeout: int) -> subprocess.CompletedProcess:
    """One line in a fresh bash from the project root; on timeout its whole process group
    (spark-submit's driver JVM included) is killed."""
    proc = subprocess.Popen(["bash", "-c", command], cwd=PROJECT_ROOT, env=user_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{command}\ndid not finish within {timeout}s:\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group: a worker's group holds its executors,
    the MLflow server's its own workers. Killed processes that nobody reaps stay as zombies."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except ProcessLookupError:
            return []
    members = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, _ppid, group = stat[stat.rindex(")") + 2:].split()[:3]
            if int(group) == pgid and state != "Z":
                members.append(int(entry.name))
    return members


def delta_rows(table: Path) -> tuple[int, int]:
    """(latest version, rows) of a Delta table from its log: the files added and not removed,
    each with its row count in its statistics. Tables this young have no checkpoint."""
    log = table / "_delta_log"
    assert not list(log.glob("*.checkpoint*")), f"{table}: a checkpoint; this helper reads JSON commits only"
    commits = sorted(log.glob("*.json"))
    assert commits, f"{table}: no Delta log"
    files: dict[str, int] = {}
    for commit in commits:
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                files[action["add"]["path"]] = json.loads(action["add"]["stats"])["numRecords"]
            elif "remove" in action:
                files.pop(action["remove"]["path"], None)
    return int(commits[-1].stem), sum(files.values())


@pytest.fixture
def fresh_state():
    """The block's output folders as on a fresh checkout; a user's own put back after."""
    busy = [f"{name} {port}" for name, port in PORTS.items() if port_open(port)]
    if busy:
        pytest.fail(f"ports in use on 127.0.0.1: {busy}; the README's cluster block needs them "
                    "(a cluster from make cluster-up? make cluster-down stops it)")
    moved = []
    for path in (LAKE, deploy.STATE):
        if path.exists():
            aside = path.with_name(f"{path.name}.before-docs-test")
            assert not aside.exists(), f"{aside} is left from an interrupted run of this test: put it back first"
            path.rename(aside)
            moved.append((path, aside))
    yield
    for path in (LAKE, deploy.STATE):  # the executors' unpacked environments among them: GBs
        shutil.rmtree(path, ignore_errors=True)
    for path, aside in moved:
        aside.rename(path)


def test_the_readme_cluster_block_runs_as_written(fresh_state):
    readme = marked_block(section((PROJECT_ROOT / "README.md").read_text(encoding="utf-8"), "Running on a cluster"),
                          "README.md, Running on a cluster")
    doc = marked_block((PROJECT_ROOT / "docs" / "cluster.md").read_text(encoding="utf-8"), "docs/cluster.md")
    assert readme == doc, "the README's cluster block and docs/cluster.md's copy differ"
    lines = commands(readme)
    assert lines[:2] == ["make package", "make cluster-up"] and lines[-1] == "make cluster-down", lines
    submits = lines[2:-1]
    assert len(submits) == 1 and submits[0].startswith(".venv/bin/ipsynergy deploy submit "), submits
    # The checks below are of what generate writes: a block that submits another job needs them changed.
    assert submits[0].split()[3] == "generate", submits[0]
    sets = dict(s.split("=", 1) for s in re.findall(r"--set (\S+)", submits[0]))

    results: dict[str, subprocess.CompletedProcess] = {}
    try:
        for line in lines[:-1]:
            results[line] = done = run(line, TIMEOUT.get(line, SUBMIT_TIMEOUT))
            assert done.returncode == 0, f"{line}\nexited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
            if line == "make cluster-up":
                cluster = deploy.Cluster.load(deploy.STATE)
                assert cluster is not None and cluster.master == f"spark://127.0.0.1:{PORTS['master']}", cluster
        # While it is up: the master lists the submission as one application run to its end.
        with urllib.request.urlopen(f"http://127.0.0.1:{PORTS['master UI']}/json/", timeout=10) as resp:
            master = json.load(resp)
        apps = master["completedapps"]
        assert [a["state"] for a in apps] == ["FINISHED"] and not master["activeapps"], master
    finally:
        # The block's last line, whatever happened above; if it fails, stop the cluster anyway.
        down = run(lines[-1], TIMEOUT[lines[-1]])
        if deploy.Cluster.load(deploy.STATE):
            deploy.cluster_down(deploy.STATE)
    assert down.returncode == 0 and "stopped master, worker-1, worker-2, mlflow" in down.stdout, \
        down.stdout[-3000:] + down.stderr[-3000:]
    assert not (deploy.STATE / "cluster.json").exists()
    left = {name: group_members(pid) for name, pid in cluster.pids.items()}
    assert not any(left.values()), f"still running after make cluster-down: {left}"
    assert not [port for port in PORTS.values() if port_open(port)], "a port is still open after make cluster-down"

    # The job ran on the cluster: each worker's executor of that one application ran tasks.
    app = apps[0]["id"]
    for worker in ("worker-1", "worker-2"):
        logs = list((deploy.STATE / worker / app).glob("*/stderr"))
        assert logs and any("Running task" in log.read_text() for log in logs), f"{worker} ran no task of {app}"

    # ... and wrote what its summary says, with the block's settings.
    out = results[submits[0]].stdout
    assert "== jobs.generate summary ==" in out, out[-4000:]
    raw = LAKE / "raw"
    stamp = json.loads((raw / STAMP).read_text())["generate"]
    for key, value in sets.items():
        if key.startswith("generate."):
            assert str(stamp[key.removeprefix("generate.")]) == value, (key, stamp)
    files = {p: int(n) for p, n in re.findall(r"^  files (\w+) +(\d+)$", out, re.M)}
    demo = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "platforms").glob("*.yaml"))
    assert sorted(files) == demo, out[-4000:]
    for platform, count in files.items():
        written = [p for p in (raw / platform).rglob("*") if p.is_file() and not p.name.startswith(".")]
        assert len(written) == count > 0, (platform, written)
    tables = dict(re.findall(r"^  table truth\.(\w+) +version (\d+)$", out, re.M))
    assert {"accounts", "defects"} <= set(tables), out[-4000:]
    rows = {}
    for name, version in tables.items():
        latest, rows[name] = delta_rows(LAKE / "truth" / name)
        assert latest == int(version) and rows[name] > 0, (name, latest, rows[name])
    summary = {k: int(v.replace(",", "")) for k, v in re.findall(r"^  (accounts|defects planted) +([\d,]+)$", out, re.M)}
    assert rows["accounts"] == summary["accounts"] and rows["defects"] == summary["defects planted"], (rows, summary)
