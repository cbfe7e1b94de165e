"""Generate synthetic raw platform exports (and the planted truth, kept apart).

Writes <raw>/<platform>/{events,accounts}/part-NNNNN.<ext> in each platform's own format
and the truth tables lake/truth/{accounts,creators,platforms,defects}. Same seed and
sizes, same files. Sizes: --set generate.sessions=... (about 1.9 events a session);
see docs/generator.md (its scaling table) for 10^7 and 10^8 events.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import lake
from core.errors import ConfigError
from core.settings import Settings, load_platforms
from core.tables import (
    select_contract,
)
from evaluation import generator as gen
from evaluation.truth import TRUTH_ACCOUNTS, TRUTH_CREATORS, TRUTH_DEFECTS, TRUTH_PEOPLE, TRUTH_PLATFORMS
from jobs.cli import Summary, run_job

log = logging.getLogger(__name__)
STAMP = "_GENERATED.json"
EXT = {"json": "jsonl", "csv": "csv", "parquet": "parquet"}


def _write_files(spark: SparkSession, df: DataFrame, fmt: str, target: str, header: str | None = None) -> int:
    """Write one file per ``file_idx`` in ``ord`` order, then give the files stable names.

    Spark names output files with a random id; exports have stable names, and stable
    names make 'same seed, same files' checkable.
    """
    if header is not None:
        # A null ord sorts first: the header leads each file.
        heads = df.select("file_idx").distinct().select(
            "file_idx", F.lit(None).cast(df.schema["ord"].dataType).alias("ord"), F.lit(header).alias("value"))
        df = df.unionByName(heads)
    tmp = f"{target}/_tmp_write"
    data = df.repartition("file_idx").sortWithinPartitions("file_idx", "ord").drop("ord")
    writer = data.write.mode("overwrite").partitionBy("file_idx")
    if fmt == "parquet":
        writer.parquet(tmp)
    else:
        writer.text(tmp)
    fs, tmp_path = lake.filesystem(spark, tmp)
    count = 0
    for status in fs.listStatus(tmp_path):
        name = status.getPath().getName()
        if not name.startswith("file_idx="):
            continue
        idx = int(name.split("=", 1)[1])
        parts = [s.getPath() for s in fs.listStatus(status.getPath()) if s.getPath().getName().startswith("part-")]
        for j, part in enumerate(sorted(parts, key=lambda p: p.getName())):
            suffix = f"-{j}" if len(parts) > 1 else ""
            dest = lake.hadoop_path(spark, f"{target}/part-{idx:05d}{suffix}.{EXT[fmt]}")
            fs.delete(dest, False)
            fs.rename(part, dest)
            count += 1
    fs.delete(tmp_path, True)
    return count


def _stamp(settings: Settings) -> str:
    payload = settings.generate.model_dump(mode="json")
    return json.dumps({"generate": payload, "digest": hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()},
                      sort_keys=True)


def _same_settings(stamp: str, settings: Settings) -> bool:
    """Whether raw data stamped ``stamp`` was generated with these settings. Stamps written
    before generate.dynamics existed are of the steady generator."""
    written = {"dynamics": "steady", **json.loads(stamp)["generate"]}
    return written == settings.generate.model_dump(mode="json")


def execute(spark: SparkSession, settings: Settings, summary: Summary, force: bool = False) -> Summary:
    cfg = settings.generate
    raw = settings.raw_root
    stamp_path = f"{raw}/{STAMP}"
    existing = None if force else lake.read_text(spark, stamp_path)
    if existing is not None:
        if _same_settings(existing, settings):
            summary.note(f"raw data for these settings already in {raw}; nothing to do (--force regenerates)")
            return summary
        raise ConfigError(f"{raw} holds data generated with other settings; "
                         f"use another lake.raw, delete it, or pass --force to overwrite")
    mappings = load_platforms()  # the demo platforms, whatever folder the user's mappings are in
    missing = [m.name for m in gen.PLATFORM_MODELS if m.name not in mappings]
    if missing:
        raise ConfigError(f"the generator writes platforms {missing} but conf/platforms has no mapping for them")

    frames = gen.build(spark, cfg)
    events = frames["events"].cache()
    accounts = frames["accounts"].cache()
    defects, cached = [], [events, accounts]
    for model in gen.PLATFORM_MODELS:
        name = model.name
        fmt = mappings[name].format
        plat = gen.with_defects(cfg, name, events.where(F.col("platform") == name))
        plat = plat.cache()
        cached.append(plat)
        header = ",".join(mappings[name].events.columns) if fmt == "csv" else None
        files = _write_files(spark, gen.export_events(cfg, mappings[name], plat), fmt, f"{raw}/{name}/events", header)
        defects.append(plat.where(F.col("defect").isNotNull() & (F.col("copy") == 0))
                           .select(F.lit(name).alias("platform"), gen.source_event_id(name).alias("source_event_id"), "defect"))
        acc = gen.export_accounts(name, accounts.where(F.col("platform") == name))
        acc = acc.withColumn("file_idx", F.lit(0)).withColumn("ord", F.struct("account_id")).drop("account_id")
        acc_header = ",".join(mappings[name].accounts.columns) if fmt == "csv" else None
        files += _write_files(spark, acc, fmt, f"{raw}/{name}/accounts", acc_header)
        log.info("generate: %s written (%d files, %s)", name, files, fmt)
        summary.count(f"files {name}", files)
    n_events = events.count()
    summary.count("events (clean, before defects)", n_events)
    summary.count("accounts", accounts.count())

    truth_accounts = accounts.select("platform", "account_id", "person_id", "persona")
    truth_creators = frames["creators"].select("creator_id", "quality", "category")
    truth_platforms = spark.createDataFrame([(m.name, m.promotion) for m in gen.PLATFORM_MODELS], "platform string, promotion double")
    truth_defects = defects[0]
    for d in defects[1:]:
        truth_defects = truth_defects.unionByName(d)
    truths = [(TRUTH_ACCOUNTS, truth_accounts), (TRUTH_CREATORS, truth_creators), (TRUTH_PLATFORMS, truth_platforms),
              (TRUTH_DEFECTS, truth_defects)]
    if "people" in frames:
        truths.append((TRUTH_PEOPLE, frames["people"]))
    for table, df in truths:
        summary.table(table.qualified, lake.overwrite(spark, settings, table, select_contract(df, table)))
    summary.count("defects planted", lake.read(spark, settings, TRUTH_DEFECTS).count())

    lake.write_text(spark, stamp_path, _stamp(settings))
    for df in reversed(cached):  # the truth tables above still read them; later stages share the session
        df.unpersist()
    summary.note(f"raw exports in {raw}")
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_job(
        "jobs.generate", __doc__, argv, execute,
        add_arguments=lambda p: p.add_argument("--force", action="store_true",
                                               help="regenerate even if raw data for these settings exists"),
        options=lambda a: {"force": a.force},
    )


if __name__ == "__main__":
    sys.exit(main())
