"""The one SparkSession builder of the suite (jobs and tests), with Delta configured here.

Delta jars: their coordinate is derived from the installed delta-spark and pyspark
packages (never typed twice). ``python -m core.session --fetch-jars`` resolves them once
through Spark's own Ivy into ``.cache/ivy`` inside the project; every later session uses
the cached jar files directly, so runs and tests need no network.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from pathlib import Path

from core.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

IVY_DIR = Path(os.environ.get("IPSYNERGY_IVY_DIR", PROJECT_ROOT / ".cache" / "ivy"))
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def delta_coordinate() -> str:
    """Maven coordinate of the Delta jar matching the installed delta-spark and pyspark."""
    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{importlib.metadata.version('delta-spark')}"


def _manifest() -> Path:
    return IVY_DIR / f"{delta_coordinate().replace(':', '_')}.jars"


def cached_delta_jars() -> list[str]:
    """The jar files Ivy resolved for the delta coordinate, or [] if they are not cached."""
    manifest = _manifest()
    if not manifest.exists():
        return []
    jars = [line for line in manifest.read_text().splitlines() if line]
    return jars if jars and all(Path(j).exists() for j in jars) else []


def _base_builder(app_name: str, master: str | None, conf: dict[str, str]):
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder


def submitted_conf() -> dict[str, str]:
    """The Spark settings spark-submit handed to this driver ({} when Python starts Spark itself)."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # set by spark-submit for a Python application
        return {}
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # connects to spark-submit's JVM; its conf is loaded from there
    return dict(SparkConf().getAll())


def session_conf(settings: Settings, submitted: dict[str, str] | None = None) -> dict[str, str]:
    """The Spark settings every ipsynergy session carries.

    Under spark-submit the Delta jars must come with the submission (--jars or --packages): the
    driver's JVM is already running, and jars added now would not reach its class path."""
    conf = {
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
        "spark.ui.enabled": str(settings.spark.ui).lower(),
        # Spark's stage progress bar where someone watches (a terminal), not in logs or CI
        "spark.ui.showConsoleProgress": str(sys.stderr.isatty()).lower(),
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        # Exports come in GB18030, GBK, Latin-1 ...: decode() may use any Java charset (not only
        # the seven Unicode/ASCII ones of Spark 4), and a byte it cannot decode becomes U+FFFD,
        # which refine quarantines as bad_encoding, instead of failing the whole batch.
        "spark.sql.legacy.javaCharsets": "true",
        "spark.sql.legacy.codingErrorAction": "true",
        # Arrow moves data between the JVM and pandas (sampling, scoring).
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    submitted = submitted or {}
    given = {**submitted, **settings.spark.conf}
    if submitted and not any("delta" in given.get(key, "") for key in ("spark.jars", "spark.jars.packages")):
        log.warning("spark-submit was given no Delta jars; unless the cluster's Spark has Delta on its class path, "
                    "add --jars with the jars of dist/jars (make package) or --packages %s", delta_coordinate())
    if not submitted and "spark.jars" not in given and "spark.jars.packages" not in given:
        jars = cached_delta_jars()
        if jars:
            conf["spark.jars"] = ",".join(jars)
        else:
            log.warning("delta jars not cached in %s; resolving %s through Ivy (needs network). "
                        "Run 'make setup' to cache them.", IVY_DIR, delta_coordinate())
            conf["spark.jars.packages"] = delta_coordinate()
            conf["spark.jars.ivy"] = str(IVY_DIR)
    conf.update(settings.spark.conf)
    # What spark-submit was told (--executor-memory, --conf ...) wins over our configuration.
    return {k: v for k, v in conf.items() if k not in submitted}


def build_session(settings: Settings):
    """Build (or return the running) SparkSession for these settings, with every table of their
    lake named ``<layer>.<name>`` in its catalog (the lake built last wins a name)."""
    # Local mode: Python workers (pandas UDFs, model scoring) must run this interpreter (the
    # project's venv), not whatever `python3` is first on PATH; PySpark reads PYSPARK_PYTHON
    # when it creates the context. On a cluster spark-submit's environment decides.
    if (settings.spark.master or "").startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    conf = session_conf(settings, submitted_conf())
    spark = _base_builder(settings.spark.app_name, settings.spark.master, conf).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    # Spark's catalog lives in the session's memory: every session names the lake's tables
    # itself, so that `select ... from silver.events` reads this settings' lake in any session,
    # not only in the one that wrote it. Imported here, like pyspark above: core.lake imports
    # pyspark and delta, and `python -m core.session --fetch-jars` or deploy need neither.
    from core.lake import register_lake

    register_lake(spark, settings)
    return spark


def fetch_jars() -> list[str]:
    """Resolve the delta jars once through Spark's Ivy into the project cache."""
    if cached_delta_jars():
        return cached_delta_jars()
    conf = {"spark.jars.packages": delta_coordinate(), "spark.jars.ivy": str(IVY_DIR), "spark.ui.enabled": "false"}
    spark = _base_builder("ipsynergy-fetch-jars", "local[1]", conf).getOrCreate()
    resolved = [j.removeprefix("file://").removeprefix("file:") for j in spark.conf.get("spark.jars").split(",") if j]
    spark.stop()
    if not resolved or not all(Path(j).exists() for j in resolved):
        raise RuntimeError(f"Ivy did not resolve {delta_coordinate()} into {IVY_DIR / 'jars'}")
    _manifest().write_text("\n".join(resolved) + "\n")
    return resolved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.session", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fetch-jars", action="store_true", help="cache the delta jars in .cache/ivy")
    parser.add_argument("--print-coordinate", action="store_true", help="print the delta Maven coordinate")
    args = parser.parse_args(argv)
    if args.print_coordinate:
        print(delta_coordinate())
    if args.fetch_jars:
        for jar in fetch_jars():
            print(jar)
    return 0


if __name__ == "__main__":
    sys.exit(main())
