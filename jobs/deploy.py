"""Package the suite for spark-submit, and run a real Spark standalone cluster on this machine.

    python -m jobs.deploy package [--with-env]   dist/: ipsynergy.zip (--py-files), submit.py (the
                                                 entry point), jars/ (Delta, --jars) and, with
                                                 --with-env, ipsynergy-env.tar.gz (--archives)
    python -m jobs.deploy cluster-up             a master and two workers on 127.0.0.1, started with
                                                 the installed pyspark's spark-class, and an
                                                 `mlflow server` on 127.0.0.1
    python -m jobs.deploy cluster-down           stop them
    python -m jobs.deploy submit-command JOB ... the spark-submit line for that cluster

The packed environment is the project's virtualenv (venv-pack) without what executors get from
Spark itself (pyspark) or never use (test tools, triton). It keeps torch's CUDA libraries:
PyPI's torch cannot be imported without them, even on a CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import MissingInput, UserError
from core.settings import PROJECT_ROOT

DIST = PROJECT_ROOT / "dist"
STATE = PROJECT_ROOT / ".cache" / "cluster"
CODE = ("jobs", "evaluation", "ml", "transforms", "core", "conf")
ENV_ARCHIVE = "ipsynergy-env.tar.gz"
SITE = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
# Not packed: Spark ships pyspark to executors; the rest is for tests and development, or (triton)
# only for torch.compile. The project itself travels as ipsynergy.zip.
ENV_EXCLUDE = ("pyspark/*", "triton/*", "duckdb*", "_duckdb*", "pytest*", "_pytest/*", "chispa*", "venv_pack*",
               "pyflakes*", "ruff*", "importlinter*", "import_linter*", "grimp*", "__editable__*", "ipsynergy*")


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


# -- packaging ---------------------------------------------------------------
def package_code(dist: Path = DIST) -> list[Path]:
    """Write dist/ipsynergy.zip, dist/submit.py and dist/jars/ (the cached Delta jars)."""
    from core.session import cached_delta_jars, fetch_jars

    dist.mkdir(parents=True, exist_ok=True)
    code = dist / "ipsynergy.zip"
    with zipfile.ZipFile(code.with_suffix(".tmp"), "w", zipfile.ZIP_DEFLATED) as zf:
        for top in CODE:
            for path in sorted((PROJECT_ROOT / top).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    zf.write(path, path.relative_to(PROJECT_ROOT).as_posix())
    code.with_suffix(".tmp").replace(code)
    shutil.copyfile(PROJECT_ROOT / "jobs" / "submit.py", dist / "submit.py")
    jars_dir = dist / "jars"
    shutil.rmtree(jars_dir, ignore_errors=True)
    jars_dir.mkdir()
    for jar in cached_delta_jars() or fetch_jars():
        shutil.copyfile(jar, jars_dir / Path(jar).name)
    return [code, dist / "submit.py", *sorted(jars_dir.iterdir())]


def pack_env(dist: Path = DIST) -> Path:
    """venv-pack this virtualenv (less ENV_EXCLUDE) into dist/ipsynergy-env.tar.gz."""
    dist.mkdir(parents=True, exist_ok=True)
    out = dist / ENV_ARCHIVE
    cmd = [str(Path(sys.prefix, "bin", "venv-pack")), "--prefix", sys.prefix, "--output", str(out),
           "--compress-level", "1", "--force", "--quiet"]
    for pattern in ENV_EXCLUDE:
        cmd += ["--exclude", f"{SITE}/{pattern}"]
    print(f"packing {sys.prefix} into {out} (about a minute)...", flush=True)
    subprocess.run(cmd, check=True)
    return out


def jars(dist: Path = DIST) -> list[Path]:
    found = sorted((dist / "jars").glob("*.jar"))
    if not found:
        raise MissingInput(f"no jars in {dist / 'jars'}: run 'make package' first")
    return found


def submit_argv(master: str, job: list[str], dist: Path = DIST, driver_python: str | None = None,
                conf: dict[str, str] | None = None) -> list[str]:
    """The spark-submit command line for one job, using only the artefacts in ``dist``."""
    argv = [str(spark_home() / "bin" / "spark-submit"), "--master", master, "--deploy-mode", "client",
            "--jars", ",".join(str(j) for j in jars(dist)),
            "--py-files", str(dist / "ipsynergy.zip"),
            "--archives", f"{dist / ENV_ARCHIVE}#environment",
            "--conf", "spark.pyspark.python=./environment/bin/python"]
    if driver_python:
        argv += ["--conf", f"spark.pyspark.driver.python={driver_python}"]
    for key, value in (conf or {}).items():
        argv += ["--conf", f"{key}={value}"]
    return [*argv, str(dist / "submit.py"), *job]


# -- a standalone cluster on 127.0.0.1 ----------------------------------------
@dataclass
class Cluster:
    state_dir: str
    master_port: int
    ui_port: int
    mlflow_port: int
    pids: dict[str, int]

    @property
    def master(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def save(self) -> None:
        Path(self.state_dir, "cluster.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, state_dir: Path = STATE) -> "Cluster | None":
        path = Path(state_dir, "cluster.json")
        return cls(**json.loads(path.read_text())) if path.exists() else None

    def alive_workers(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as resp:
                return int(json.load(resp).get("aliveworkers", 0))
        except OSError:
            return 0

    def kill(self, name: str) -> None:
        """SIGKILL one process group (a worker takes its executors with it)."""
        pid = self.pids.get(name)
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _start(name: str, argv: list[str], state: Path, env: dict[str, str]) -> int:
    with (state / "logs" / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=state, start_new_session=True)  # own process group: killable whole
    return proc.pid


def _wait(what: str, ready, timeout: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise UserError(f"{what} did not come up within {timeout:.0f}s; see the logs in {logs}")
        time.sleep(1)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def cluster_up(state_dir: Path = STATE, workers: int = 2, cores: int = 1, memory: str = "5g",
               master_port: int = 7077, ui_port: int = 8080, mlflow_port: int = 5000,
               cleanup_after: int = 600) -> Cluster:
    """Start a master, ``workers`` workers and an MLflow tracking server, all on 127.0.0.1.

    Every executor unpacks the environment archive (3 GB, 5 GB unpacked) into its worker's
    work folder, next to its logs, and Spark keeps them after the application ends. The workers'
    cleanup removes a finished application's folders (logs too) once nothing in them has been
    written for ``cleanup_after`` seconds; it looks every minute, or as often as that."""
    running = Cluster.load(state_dir)
    if running and running.alive_workers():
        print(f"a cluster is already up at {running.master}, with the settings it was started with "
              "(make cluster-down stops it)")
        return running
    if running:  # a half-dead earlier start: stop what is left of it first
        cluster_down(state_dir)
    state = Path(state_dir)
    (state / "logs").mkdir(parents=True, exist_ok=True)
    # Scratch space (shuffle files, fetched archives) stays under the state folder, not /tmp.
    env = {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(state / "logs"), "SPARK_LOCAL_DIRS": str(state.resolve() / "local"),
           "SPARK_WORKER_OPTS": f"{os.environ.get('SPARK_WORKER_OPTS', '')} -Dspark.worker.cleanup.enabled=true"
                                f" -Dspark.worker.cleanup.interval={min(cleanup_after, 60)}"
                                f" -Dspark.worker.cleanup.appDataTtl={cleanup_after}".strip()}
    spark_class = str(spark_home() / "bin" / "spark-class")
    cluster = Cluster(str(state), master_port, ui_port, mlflow_port, {})
    cluster.pids["master"] = _start("master", [spark_class, "org.apache.spark.deploy.master.Master", "--host",
                                               "127.0.0.1", "--port", str(master_port), "--webui-port", str(ui_port)],
                                    state, env)
    for i in range(1, workers + 1):
        work = state / f"worker-{i}"
        work.mkdir(exist_ok=True)
        cluster.pids[f"worker-{i}"] = _start(
            f"worker-{i}", [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                            "--webui-port", "0", "--cores", str(cores), "--memory", memory,
                            "--work-dir", str(work), cluster.master], state, env)
    cluster.pids["mlflow"] = _start(
        "mlflow", [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                   "--backend-store-uri", f"sqlite:///{state.resolve()}/mlflow.db",
                   "--artifacts-destination", str(state.resolve() / "mlartifacts"), "--workers", "1"], state, env)
    cluster.save()
    try:
        _wait(f"{workers} Spark workers", lambda: cluster.alive_workers() == workers, 120, state / "logs")
        _wait("the MLflow server", lambda: _http_ok(f"{cluster.tracking_uri}/health"), 120, state / "logs")
    except UserError:
        cluster_down(state)
        raise
    print(f"Spark master   {cluster.master}  (UI http://127.0.0.1:{ui_port})\n"
          f"workers        {workers} x {cores} core, {memory}\n"
          f"MLflow server  {cluster.tracking_uri}\n"
          f"logs           {state / 'logs'}")
    return cluster


def cluster_down(state_dir: Path = STATE) -> None:
    cluster = Cluster.load(state_dir)
    if cluster is None:
        print("no cluster is up")
        return
    for name in cluster.pids:
        try:
            os.killpg(cluster.pids[name], signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 20
    for name in cluster.pids:
        while time.monotonic() < deadline and _alive(cluster.pids[name]):
            time.sleep(0.5)
        cluster.kill(name)
    Path(state_dir, "cluster.json").unlink()
    print(f"stopped {', '.join(cluster.pids)}")


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child (started in this process)
    except ChildProcessError:
        pass
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _seconds(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds, 1 or more")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    pkg = sub.add_parser("package", help="build dist/ for spark-submit")
    pkg.add_argument("--with-env", action="store_true", help="also pack the virtualenv (slow; make does it "
                                                             "only when the packages change)")
    up = sub.add_parser("cluster-up", help="start a standalone cluster and an MLflow server on 127.0.0.1")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--worker-cores", type=int, default=1)
    up.add_argument("--worker-memory", default="5g")
    up.add_argument("--master-port", type=int, default=7077)
    up.add_argument("--ui-port", type=int, default=8080)
    up.add_argument("--mlflow-port", type=int, default=5000)
    up.add_argument("--cleanup-after", type=_seconds, default=600, metavar="SECONDS",
                    help="delete a finished application's work folders (its unpacked environment, 5 GB "
                         "per executor, and its executor logs) this long after their last write "
                         "(default: %(default)s)")
    sub.add_parser("cluster-down", help="stop the cluster and the MLflow server")
    cmd = sub.add_parser("submit-command", help="print the spark-submit line of a job for the local cluster")
    cmd.add_argument("job", nargs=argparse.REMAINDER, help="JOB [job options], e.g. pipeline --env cluster")
    run = sub.add_parser("submit", help="run a job on the cluster with spark-submit (the line submit-command prints)")
    run.add_argument("--master", default=None, help="the cluster's master URL (default: the one cluster-up started, "
                                                    "else spark://127.0.0.1:7077)")
    run.add_argument("job", nargs=argparse.REMAINDER, help="JOB [job options], e.g. pipeline --env cluster")
    args = parser.parse_args(argv)
    if args.command == "package":
        for path in package_code():
            print(path.relative_to(PROJECT_ROOT))
        if args.with_env:
            print(pack_env().relative_to(PROJECT_ROOT))
    elif args.command == "cluster-up":
        cluster_up(STATE, args.workers, args.worker_cores, args.worker_memory, args.master_port, args.ui_port,
                   args.mlflow_port, args.cleanup_after)
    elif args.command == "cluster-down":
        cluster_down(STATE)
    else:
        cluster = Cluster.load(STATE)
        master = getattr(args, "master", None) or (cluster.master if cluster else "spark://127.0.0.1:7077")
        argv = submit_argv(master, args.job, driver_python=sys.executable, conf={"spark.driver.host": "127.0.0.1"})
        if args.command == "submit-command":
            print(shlex.join(argv))
            return 0
        if not args.job:
            parser.error("submit needs a JOB, e.g. submit pipeline --env cluster")
        # spark-submit finds Spark through SPARK_HOME: the installed pyspark's, whatever the shell has
        os.environ["SPARK_HOME"] = str(spark_home())
        os.execv(argv[0], argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
