"""Bronze -> silver: parse each platform's records by its mapping, validate, and give every
rejected record its reasons.

All built-in Spark functions (``from_json``, ``from_csv``, ``try_cast``,
``try_to_timestamp``); no Python UDFs.
"""
from __future__ import annotations

import datetime as dt
import re

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from core.settings import RefineSettings
from core.sources import Const, PlatformMapping, SourceSpec
from core.tables import AMOUNT, AMOUNT_ORIG, EVENTS, select_contract
from transforms.identity import user_id_for
from transforms.ingest import UNREADABLE

TRUE_TEXT = ("1", "true", "t", "y", "yes")
# Quoted-CSV-aware split: a separator followed by an even number of quotes.
_OUTSIDE_QUOTES = '(?=(?:[^"]*"[^"]*")*[^"]*$)'


def _json_schema(paths: list[str]) -> StructType:
    """A struct of strings that holds every dotted path (``user.uid``) plus the corrupt-record column."""
    tree: dict = {}
    for path in paths:
        node = tree
        parts = path.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node.setdefault(parts[-1], None)

    def build(node: dict) -> StructType:
        return StructType([StructField(k, build(v) if isinstance(v, dict) else StringType(), True) for k, v in node.items()])

    schema = build(tree)
    return StructType(schema.fields + [StructField("_corrupt_record", StringType(), True)])


def extract_fields(df: DataFrame, mapping: PlatformMapping, part: SourceSpec) -> DataFrame:
    """Add ``f_<field>`` string columns from ``raw`` per the mapping, plus ``malformed``."""
    sources = {k: v for k, v in part.fields.items() if isinstance(v, str)}
    if mapping.format == "csv":
        cols = part.columns or []
        schema = ", ".join(f"`{c}` STRING" for c in cols)
        opts = {"mode": "PERMISSIVE", **part.reader}
        df = df.withColumn("_p", F.from_csv(F.col("raw"), schema, opts))
        parsed = F.col("_p")
        # Count fields by the mapping's own separator. The quote-aware split scans the rest of
        # the line at every separator; a line without a quote (nearly all) splits the same on
        # the plain separator, at a fraction of the cost.
        sep = re.escape(part.separator)
        n_fields = F.when(F.instr(F.col("raw"), '"') > 0, F.size(F.split(F.col("raw"), sep + _OUTSIDE_QUOTES))) \
                    .otherwise(F.size(F.split(F.col("raw"), sep)))
        malformed = F.col("raw").isNull() | (n_fields != len(cols))
        get = {k: F.nullif(F.trim(parsed[v]), F.lit("")) for k, v in sources.items()}
    else:
        opts = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt_record"}
        df = df.withColumn("_p", F.from_json(F.col("raw"), _json_schema(list(sources.values())), opts))
        parsed = F.col("_p")
        malformed = F.col("raw").isNull() | parsed.isNull() | parsed["_corrupt_record"].isNotNull()
        get = {}
        for k, v in sources.items():
            col = parsed
            for p in v.split("."):
                col = col[p]
            get[k] = F.nullif(F.trim(col), F.lit(""))
    for k, v in part.fields.items():
        if isinstance(v, Const):
            get[k] = F.lit(v.const)
    out = df.withColumn("malformed", malformed)
    for name in {*part.fields}:
        out = out.withColumn(f"f_{name}", F.when(~F.col("malformed"), get[name]))
    return out.drop("_p")


def bad_encoding(raw: Column, decoded: bool = False) -> Column:
    """The record is not text in the mapping's encoding: invalid UTF-8 (Latin-1, a UTF-16
    byte-order mark), NUL characters (UTF-16 text read as UTF-8), or, for a file ingest
    ``decoded`` from another encoding, U+FFFD where a byte was not valid in it."""
    bad = ~F.is_valid_utf8(raw) | raw.rlike("\\x00")
    return raw.isNotNull() & ((bad | raw.contains("\uFFFD")) if decoded else bad)


def input_reasons(reasons: Column, decoded: bool = False) -> Column:
    """``reasons``, unless the record could not be read as text at all: then its only reason is
    ``unreadable_file`` (a file no reader could open, see transforms.ingest) or
    ``bad_encoding`` (the field checks would only describe the garbled decoding)."""
    return (F.when(F.col("raw_format") == F.lit(UNREADABLE), F.array(F.lit("unreadable_file")))
             .when(bad_encoding(F.col("raw"), decoded), F.array(F.lit("bad_encoding")))
             .otherwise(reasons))


def _timestamp(text: Column, fmt: str, zone: str) -> Column:
    """UTC timestamp from source text, or null when it cannot be read."""
    if fmt in ("epoch_ms", "epoch_s"):
        num = text.try_cast("double")
        secs = num / 1000 if fmt == "epoch_ms" else num
        return F.when(secs.isNotNull(), F.timestamp_micros((secs * 1_000_000).cast("long")))
    if fmt == "iso8601":
        ts = text.try_cast("timestamp")
    else:
        ts = F.try_to_timestamp(text, F.lit(fmt))
    return ts if zone == "UTC" else F.to_utc_timestamp(ts, zone)


def parse_events(df: DataFrame, mapping: PlatformMapping, cfg: RefineSettings, as_of: dt.date) -> DataFrame:
    """Bronze rows of one platform -> unified columns plus ``reasons`` (empty when valid)."""
    src = mapping.events
    out = extract_fields(df, mapping, src)
    f = {name: F.col(f"f_{name}") if name in src.fields else F.lit(None).cast("string") for name in
         ("source_event_id", "account_id", "content_id", "creator_id", "category", "event_type", "event_ts",
          "duration_s", "progress", "amount", "currency", "is_recommended", "campaign_id", "session_id")}

    vocab = F.create_map(*[x for k, v in src.vocabulary.items() for x in (F.lit(k), F.lit(v))])
    event_type = F.element_at(vocab, f["event_type"])
    ts = _timestamp(f["event_ts"], src.timestamp.format, src.timestamp.timezone)
    duration = f["duration_s"].try_cast("double")
    progress = f["progress"].try_cast("double") / F.lit(src.progress_scale)
    amount_minor = f["amount"].try_cast(AMOUNT_ORIG)
    amount_orig = (amount_minor / F.lit(src.amount_scale)).cast(AMOUNT_ORIG)
    currency = F.upper(f["currency"])
    fx = F.create_map(*[x for k, v in cfg.fx_to_base.items() for x in (F.lit(k), F.lit(v))])
    rate = F.element_at(fx, currency)
    earliest = dt.datetime.combine(cfg.earliest_valid_date, dt.time())
    latest = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time()) + dt.timedelta(hours=cfg.future_tolerance_hours)

    out = (out.withColumn("u_event_type", event_type).withColumn("u_ts", ts).withColumn("u_duration", duration)
              .withColumn("u_progress", progress).withColumn("u_amount_orig", amount_orig)
              .withColumn("u_currency", currency).withColumn("u_rate", rate))
    c = F.col
    # creator_id and content_id are required where the mapping names them (content only for
    # events about content): an export without creators (a plain purchase log) has neither.
    needs_content = ~c("u_event_type").isin("follow", "subscribe")
    missing = (f["source_event_id"].isNull() | f["account_id"].isNull() | f["event_type"].isNull()
               | f["event_ts"].isNull() | (f["amount"].isNotNull() & c("u_currency").isNull()))
    if "creator_id" in src.fields:
        missing = missing | f["creator_id"].isNull()
    if "content_id" in src.fields:
        missing = missing | (needs_content & f["content_id"].isNull())
    too_early = c("u_ts") < F.lit(earliest)
    checks = [
        ("malformed", c("malformed")),
        ("missing_field", ~c("malformed") & missing),
        ("unknown_event_type", f["event_type"].isNotNull() & c("u_event_type").isNull()),
        ("bad_timestamp", f["event_ts"].isNotNull() & (c("u_ts").isNull() | too_early)),
        ("future_timestamp", c("u_ts") > F.lit(latest)),
        ("bad_type", (f["duration_s"].isNotNull() & c("u_duration").isNull())
                     | (f["progress"].isNotNull() & c("u_progress").isNull())
                     | (f["amount"].isNotNull() & c("u_amount_orig").isNull())),
        ("out_of_range", (c("u_duration") < 0) | (c("u_progress") < 0) | (c("u_progress") > 1)),
        ("unknown_currency", c("u_currency").isNotNull() & c("u_rate").isNull()),
        ("negative_amount", (c("u_amount_orig") < 0) & (c("u_event_type") != "refund")),
    ]
    reasons = F.array_compact(F.array(*[F.when(cond, F.lit(name)) for name, cond in checks]))
    signed = F.when(c("u_event_type") == "refund", -F.abs(c("u_amount_orig"))).otherwise(c("u_amount_orig"))
    amount = F.coalesce((signed * c("u_rate")).cast(AMOUNT), F.lit(0).cast(AMOUNT))
    return out.select(
        "platform", "source_file", "source_position", "raw", "ingest_batch_id",
        input_reasons(F.coalesce(reasons, F.array().cast("array<string>")), mapping.charset != "UTF-8").alias("reasons"),
        F.concat_ws(":", F.lit(mapping.name), f["source_event_id"]).alias("event_key"),
        f["source_event_id"].alias("source_event_id"), f["account_id"].alias("account_id"),
        f["content_id"].alias("content_id"), f["creator_id"].alias("creator_id"), f["category"].alias("category"),
        c("u_event_type").alias("event_type"), c("u_ts").alias("event_ts"), F.to_date(c("u_ts")).alias("event_date"),
        c("u_duration").alias("duration_s"), c("u_progress").alias("progress"),
        amount.alias("amount"), signed.cast(AMOUNT_ORIG).alias("amount_orig"), c("u_currency").alias("currency_orig"),
        F.coalesce(F.lower(f["is_recommended"]).isin(*TRUE_TEXT), F.lit(False)).alias("is_recommended"),
        f["campaign_id"].alias("campaign_id"), f["session_id"].alias("session_id"),
        # Says why a bad_timestamp was one: readable, but older than refine.earliest_valid_date.
        F.coalesce(too_early, F.lit(False)).alias("before_earliest"),
    )


def unknown_platform(df: DataFrame) -> DataFrame:
    """Bronze rows of a platform with no mapping: all of them rejected as unknown_platform."""
    return df.select("platform", "source_file", "source_position", "raw", "ingest_batch_id",
                     F.array(F.lit("unknown_platform")).alias("reasons"))


def first_per_key(valid: DataFrame) -> DataFrame:
    """One row per event_key within a batch: the earliest record received (file, then line)."""
    w = Window.partitionBy("event_key").orderBy("source_file", "source_position")
    return valid.withColumn("_n", F.row_number().over(w)).where(F.col("_n") == 1).drop("_n")


def with_user_ids(valid: DataFrame, identity: DataFrame) -> DataFrame:
    """Attach the global user_id from the identity map; accounts with no account record are
    their own person, with the id a one-account component would get."""
    joined = valid.join(identity.select("platform", "account_id", "user_id"), on=["platform", "account_id"], how="left")
    return joined.withColumn("user_id", F.coalesce(F.col("user_id"), user_id_for(F.col("platform"), F.col("account_id"))))


def to_silver(df: DataFrame) -> DataFrame:
    return select_contract(df, EVENTS)


def parse_accounts(df: DataFrame, mapping: PlatformMapping) -> DataFrame:
    """Bronze account rows -> (platform, account_id, phone, email, union_id, reasons, provenance)."""
    out = extract_fields(df, mapping, mapping.accounts)
    f = {k: F.col(f"f_{k}") if k in mapping.accounts.fields else F.lit(None).cast("string")
         for k in ("account_id", "phone", "email", "union_id")}
    reasons = F.array_compact(F.array(
        F.when(F.col("malformed"), F.lit("malformed")),
        F.when(~F.col("malformed") & f["account_id"].isNull(), F.lit("missing_field")),
    ))
    return out.select("platform", "source_file", "source_position", "raw", "ingest_batch_id",
                      input_reasons(reasons, mapping.charset != "UTF-8").alias("reasons"),
                      *[v.alias(k) for k, v in f.items()])


# What to change when a reason dominates: the mapping key or setting behind it.
REASON_FIXES = {
    "malformed": "the mapping's format, columns (CSV: every column, in order), reader options (sep) or encoding",
    "missing_field": "events.fields in the mapping: each required field must name a column (or JSON path) that "
                     "is filled, or be a {const: ...}",
    "unknown_event_type": "events.event_types in the mapping (source value -> unified type), or "
                          "fields.event_type: {const: purchase}",
    "bad_timestamp": "events.timestamp.format in the mapping (a Spark pattern such as yyyyMMdd, or epoch_ms, "
                     "epoch_s, iso8601), or refine.earliest_valid_date for old data",
    "future_timestamp": "--as-of (leave it out with --input: the run date then follows the data), or "
                        "refine.future_tolerance_hours",
    "bad_type": "the mapping's duration_s / progress / amount fields: they must name numeric columns",
    "out_of_range": "events.progress_scale (100 for percent) in the mapping",
    "unknown_currency": "refine.fx_to_base (add the currency), or fields.currency: {const: CNY}",
    "negative_amount": "fields.event_type / event_types: negative amounts are accepted on refunds only",
    "bad_encoding": "encoding in the mapping (e.g. gb18030, utf-16, latin-1)",
    "unknown_platform": "a <platform>.yaml mapping in the platforms folder (--platforms DIR), named like the "
                        "export's folder",
    "unreadable_file": "the file itself: it is not readable Parquet (truncated or not Parquet); export it again",
}


def reason_counts(quarantine: DataFrame) -> DataFrame:
    """(reason, records, example_file, example_position, example_raw): one row per reason of
    the quarantined records, with the first record (file, then line) as its example."""
    first = F.min(F.struct("source_file", "source_position", "raw"))
    return (quarantine.select(F.explode("reasons").alias("reason"), "source_file", "source_position", "raw")
                      .groupBy("reason").agg(F.count(F.lit(1)).alias("records"), first.alias("_e"))
                      .select("reason", "records", F.col("_e.source_file").alias("example_file"),
                              F.col("_e.source_position").alias("example_position"),
                              F.col("_e.raw").alias("example_raw"))
                      .orderBy(F.desc("records"), "reason"))


def run_date(histogram: list[tuple[dt.date, int]], max_gap_days: int = 31, min_share: float = 0.05) -> dt.date | None:
    """The latest event date of the data, ignoring a far tail. The dates are cut into runs
    wherever ``max_gap_days`` pass without an event; the run date is the last date of the
    latest run that holds at least ``min_share`` of the events (of the largest run, if none
    does). A few records dated 2099 form a run of their own and do not move it; a quiet last
    month does not hide the data before it. ``histogram``: (event date, events) pairs."""
    days = sorted((d, n) for d, n in histogram if n > 0)
    if not days:
        return None
    runs: list[list[tuple[dt.date, int]]] = [[days[0]]]
    for d, n in days[1:]:
        if (d - runs[-1][-1][0]).days > max_gap_days:
            runs.append([])
        runs[-1].append((d, n))
    total = sum(n for _, n in days)
    sizable = [r for r in runs if sum(n for _, n in r) >= min_share * total]
    chosen = sizable[-1] if sizable else max(runs, key=lambda r: sum(n for _, n in r))
    return chosen[-1][0]
