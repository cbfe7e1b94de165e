"""Ingest raw platform exports into bronze.events_raw and bronze.accounts_raw.

Reads <input>/<platform>/events/** and <input>/<platform>/accounts/** (one folder per
platform, as `jobs.generate` writes it and as real exports are laid out). Files already in
bronze.ingest_manifest (same path, size and modification time) are skipped, so ingesting
the same files again adds nothing. A folder with no mapping in conf/platforms is ingested
as text and quarantined by refine as unknown_platform: nothing is dropped silently.
A Parquet file no reader can open (truncated, empty, not Parquet) becomes one bronze row
that refine quarantines as unreadable_file, and the job says which file; any other read
error stops the job with a message naming the file.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import sys
from functools import reduce

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import lake
from core.errors import InputRejected, MissingInput
from core.settings import Settings
from core.sources import PlatformMapping
from core.tables import ACCOUNTS_RAW, EVENTS_RAW, INGEST_MANIFEST, select_contract
from jobs.cli import Summary, input_option, input_value, run_job
from transforms.ingest import decoded, parquet_records, to_bronze, unreadable_files, whole_file_lines

log = logging.getLogger(__name__)
KINDS = {"events": EVENTS_RAW, "accounts": ACCOUNTS_RAW}
# Spark's error classes for a file that is not readable Parquet at all (no footer).
_UNREADABLE = ("CANNOT_READ_FILE_FOOTER", "is not a Parquet file", "CORRUPTED_FOOTER")


class IngestError(InputRejected):
    """A raw file could not be read for a reason other than being corrupt (named in the message)."""


def list_files(spark: SparkSession, root: str) -> list[tuple[str, str, str, int, int]]:
    """(platform, kind, path, size, mtime_ms) for every data file under root/<platform>/<kind>/."""
    fs, rpath = lake.filesystem(spark, root)
    if not fs.exists(rpath):
        raise MissingInput(f"raw input {root} does not exist: run 'python -m jobs.generate' "
                                f"or point --input (or lake.raw) at the platform exports")
    found = []
    for pdir in fs.listStatus(rpath):
        platform = pdir.getPath().getName()
        if not pdir.isDirectory() or platform.startswith(("_", ".")):
            continue
        for kdir in fs.listStatus(pdir.getPath()):
            kind = kdir.getPath().getName()
            if not kdir.isDirectory() or kind.startswith(("_", ".")):
                continue
            it = fs.listFiles(kdir.getPath(), True)
            while it.hasNext():
                st = it.next()
                name = st.getPath().getName()
                if name.startswith(("_", ".")):
                    continue
                found.append((platform, kind, st.getPath().toString(), st.getLen(), st.getModificationTime()))
    return sorted(found)


def read_records(spark: SparkSession, files: list[str], fmt: str, charset: str = "UTF-8") -> DataFrame:
    """The files' records as (``value``, source_file, block_start): text lines decoded from
    ``charset`` (a Java name, PlatformMapping.charset), or Parquet rows as JSON (see
    :func:`_read_parquet`). UTF-16 and UTF-32 files are read whole (their line breaks are two or
    four bytes), any other encoding line by line."""
    meta = [F.col("_metadata.file_path").alias("source_file"), F.col("_metadata.file_block_start").alias("block_start")]
    if fmt == "parquet":
        return _read_parquet(spark, files, meta)
    if charset.upper().startswith(("UTF-16", "UTF-32")):
        whole = spark.read.format("binaryFile").load(files).select("content", meta[0])
        return whole_file_lines(whole, charset)
    return decoded(spark.read.text(files).select("value", *meta), charset)


def _read_parquet(spark: SparkSession, files: list[str], meta: list) -> DataFrame:
    """Parquet files as JSON records. One read with merged schemas when the files agree; when
    they do not (a column changed type between exports) or one cannot be opened, file by file:
    a file without a readable footer becomes an ``unreadable`` row, any other error stops the
    job naming the file."""
    try:
        return parquet_records(spark.read.option("mergeSchema", "true").parquet(*files).select("*", *meta))
    except Exception as err:  # noqa: BLE001 - narrowed file by file below
        log.warning("ingest: the %d Parquet file(s) cannot be read together (%s); reading them one by one",
                    len(files), _first_line(err))
    frames, bad = [], []
    for path in files:
        try:
            frames.append(parquet_records(spark.read.parquet(path).select("*", *meta)))
        except Exception as err:  # noqa: BLE001
            if not any(marker in str(err) for marker in _UNREADABLE):
                raise IngestError(f"cannot read {path}: {_first_line(err)}") from err
            log.error("ingest: %s is not readable Parquet (%s); it goes to bronze as one record and refine "
                      "quarantines it as unreadable_file", path, _first_line(err))
            bad.append(path)
    if bad:
        frames.append(unreadable_files(spark, bad))
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out


def _first_line(err: BaseException) -> str:
    """The informative line of a (py4j) Spark error: the one naming the error class, or the first."""
    lines = [x.strip() for x in str(err).splitlines() if x.strip()]
    named = [x for x in lines if "[" in x and "]" in x and "Exception" in x] or lines or [type(err).__name__]
    return named[0][:400]


def read_kind(spark: SparkSession, settings: Settings, new: list, kind: str, batch_id: str,
              ingested_at: dt.datetime) -> DataFrame | None:
    """The new files of one kind (events, accounts) from every platform, as one bronze batch;
    None if there are none. A platform without a mapping for the kind goes in as text, which
    refine quarantines as unknown_platform."""
    mappings = settings.platforms
    frames = []
    for platform in sorted({f[0] for f in new if f[1] == kind}):
        files = [f[2] for f in new if f[0] == platform and f[1] == kind]
        mapping: PlatformMapping | None = mappings.get(platform)
        part = mapping.parts.get(kind) if mapping else None
        if part is None:
            where = (f"no mapping in {settings.platforms_dir or 'conf/platforms'}" if mapping is None
                     else f"no '{kind}:' block in its mapping")
            log.warning("ingest: %s has %s; its %d %s file(s) go to bronze as text and will be quarantined "
                        "as unknown_platform", platform, where, len(files), kind)
            fmt, header, charset = "text", None, "UTF-8"
        else:
            fmt, charset = mapping.format, mapping.charset
            header = part.separator.join(part.columns) if fmt == "csv" and part.columns else None
        log.info("ingest: reading %d %s file(s) of %s (%s, %s)", len(files), kind, platform, fmt, charset)
        frames.append(to_bronze(read_records(spark, files, fmt, charset), platform, fmt,
                                batch_id, ingested_at, header, partitions=len(files)))
    if not frames:
        return None
    return reduce(DataFrame.unionByName, frames)


def execute(spark: SparkSession, settings: Settings, summary: Summary, input_root: str | None = None) -> Summary:
    root = input_root or settings.raw_root
    listing = list_files(spark, root)
    if lake.exists(spark, settings, INGEST_MANIFEST):
        seen = {(r.source_file, r.size_bytes, r.modified_ms)
                for r in lake.read(spark, settings, INGEST_MANIFEST).select("source_file", "size_bytes", "modified_ms").collect()}
    else:
        seen = set()
    new = [f for f in listing if (f[2], f[3], f[4]) not in seen]
    summary.count("files found", len(listing))
    summary.count("files new", len(new))
    if not new:
        summary.note(f"no new files under {root}")
        return summary
    # The batch id is derived from the files, so a rerun after a crash reuses it.
    batch_id = hashlib.sha256("\n".join(f"{p}|{s}|{m}" for _, _, p, s, m in new).encode()).hexdigest()[:16]
    ingested_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    manifest_rows = []
    for kind, table in KINDS.items():
        batch = read_kind(spark, settings, new, kind, batch_id, ingested_at)
        if batch is None:
            continue
        # Read once for the per-file counts and the MERGE. On disk only: a batch can be far larger
        # than memory, and unrolling it into memory competes with the line-numbering sort for the heap.
        batch = batch.persist(StorageLevel.DISK_ONLY)
        stats = batch.groupBy("source_file").agg(F.count("*").alias("n"), F.max("source_position").alias("last")).collect()
        per_file = {r.source_file: r.n for r in stats}
        skipped = sum(r.last - r.n for r in stats if r.last)
        version, inserted = lake.merge_insert(spark, settings, table, batch)
        summary.count(f"{kind} records read", sum(per_file.values()))
        summary.count(f"{kind} rows new in bronze", inserted)
        if skipped:
            summary.count(f"{kind} blank/header lines", skipped)
        summary.table(table.qualified, version)
        batch.unpersist()
        for platform, k, path, size, mtime in new:
            if k == kind:
                manifest_rows.append((path, platform, kind, size, mtime, per_file.get(path, 0), batch_id, ingested_at))
    # The manifest is written last: a crash before it means the files are read again next
    # time, and the keyed MERGE above inserts nothing twice.
    manifest = select_contract(spark.createDataFrame(manifest_rows, INGEST_MANIFEST.schema), INGEST_MANIFEST)
    summary.table(INGEST_MANIFEST.qualified, lake.merge_insert(spark, settings, INGEST_MANIFEST, manifest)[0])
    summary.note(f"batch {batch_id}")
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_job(
        "jobs.ingest", __doc__, argv, execute,
        add_arguments=input_option, options=input_value,
    )


if __name__ == "__main__":
    sys.exit(main())
