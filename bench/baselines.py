"""The alternatives our jobs are timed against: DuckDB SQL (2 threads), scikit-learn K-means and
the revenue model called in-process. Written here, in the bench, from the definitions in
transforms/refine.py and transforms/gold.py; the bench checks that both sides computed the same
rows (counts and checksums), so a drift between the two shows up as a failed check.

Also the one checksum both sides are judged by, computed by DuckDB over the written Parquet.
"""
from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import duckdb

from core.settings import RefineSettings
from core.sources import PlatformMapping
from transforms.refine import TRUE_TEXT  # the same truthy spellings as the Spark parse

# The silver-shaped columns both ingest sides write (silver.events without the identity-map
# user_id and the batch / file bookkeeping, which depend on the run, not on the parse).
INGEST_COLUMNS = ("event_key", "platform", "source_event_id", "account_id", "content_id", "creator_id",
                  "category", "event_type", "event_ts", "event_date", "duration_s", "progress", "amount",
                  "amount_orig", "currency_orig", "is_recommended", "campaign_id", "session_id")
UNIFIED = ("source_event_id", "account_id", "content_id", "creator_id", "category", "event_type", "event_ts",
           "duration_s", "progress", "amount", "currency", "is_recommended", "campaign_id", "session_id")


def connect(threads: int = 2) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET TimeZone = 'UTC'")
    return con


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _files(files: list[str]) -> str:
    return "[" + ", ".join(_q(f) for f in files) + "]"


# -- ingest: raw JSON / CSV -> typed, validated, silver-shaped rows --------------------------------
def _java_to_strptime(fmt: str) -> str:
    for java, c in (("yyyy", "%Y"), ("MM", "%m"), ("dd", "%d"), ("HH", "%H"), ("mm", "%M"), ("ss", "%S")):
        fmt = fmt.replace(java, c)
    return fmt


def _reader(mapping: PlatformMapping, files: list[str]) -> tuple[str, dict[str, str]]:
    """A DuckDB table function reading the platform's event files with every field as text, and
    the SQL expression of each mapped field. Malformed records (a torn JSON line, a CSV line
    with the wrong number of fields) are skipped by the reader, as refine quarantines them."""
    src = mapping.events
    paths = {k: v for k, v in src.fields.items() if isinstance(v, str)}
    if mapping.format == "csv":
        cols = ", ".join(f"{_q(c)}: 'VARCHAR'" for c in src.columns or [])
        sep = src.reader.get("sep", ",")
        reader = (f"read_csv({_files(files)}, header = true, columns = {{{cols}}}, delim = {_q(sep)}, "
                  f"quote = '\"', auto_detect = false, ignore_errors = true, strict_mode = true)")
        expr = {k: f'"{v}"' for k, v in paths.items()}
    else:
        tree: dict = {}
        for path in paths.values():
            node = tree
            *parents, leaf = path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node.setdefault(leaf, None)

        def typ(node) -> str:
            if node is None:
                return "VARCHAR"
            return "STRUCT(" + ", ".join(f'"{k}" {typ(v)}' for k, v in node.items()) + ")"

        cols = ", ".join(f"{_q(k)}: {_q(typ(v))}" for k, v in tree.items())
        reader = (f"read_json({_files(files)}, format = 'newline_delimited', columns = {{{cols}}}, "
                  f"ignore_errors = true)")
        expr = {k: ".".join(f'"{p}"' for p in v.split(".")) for k, v in paths.items()}
    out = {k: f"NULLIF(TRIM(CAST({e} AS VARCHAR)), '')" for k, e in expr.items()}
    for k, v in src.fields.items():
        if not isinstance(v, str):
            out[k] = _q(v.const)
    return reader, {k: out.get(k, "CAST(NULL AS VARCHAR)") for k in UNIFIED}


def _timestamp(text: str, fmt: str, zone: str) -> str:
    if fmt in ("epoch_ms", "epoch_s"):
        secs = f"(TRY_CAST({text} AS DOUBLE){' / 1000' if fmt == 'epoch_ms' else ''})"
        ts = f"make_timestamp(CAST(trunc({secs} * 1000000) AS BIGINT))"
    elif fmt == "iso8601":
        ts = f"TRY_CAST({text} AS TIMESTAMP)"
    else:
        ts = f"try_strptime({text}, {_q(_java_to_strptime(fmt))})"
    return ts if zone == "UTC" else f"timezone('UTC', timezone({_q(zone)}, {ts}))"


def ingest_sql(mapping: PlatformMapping, files: list[str], cfg: RefineSettings, as_of: dt.date) -> str:
    """SELECT of the valid events of one platform, shaped like silver (refine.parse_events + the
    filter on an empty reasons list)."""
    src = mapping.events
    reader, f = _reader(mapping, files)
    vocab = "MAP {" + ", ".join(f"{_q(k)}: {_q(v)}" for k, v in src.event_types.items()) + "}"
    fx = "MAP {" + ", ".join(f"{_q(k)}: CAST({float(v)!r} AS DOUBLE)" for k, v in cfg.fx_to_base.items()) + "}"
    earliest = dt.datetime.combine(cfg.earliest_valid_date, dt.time())
    latest = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time()) + dt.timedelta(hours=cfg.future_tolerance_hours)
    fields = ",\n  ".join(f"{v} AS f_{k}" for k, v in f.items())
    return f"""
WITH f AS (SELECT
  {fields}
FROM {reader}),
u AS (SELECT *,
  {vocab}[f_event_type] AS u_event_type,
  {_timestamp('f_event_ts', src.timestamp.format, src.timestamp.timezone)} AS u_ts,
  TRY_CAST(f_duration_s AS DOUBLE) AS u_duration,
  TRY_CAST(f_progress AS DOUBLE) / {float(src.progress_scale)!r} AS u_progress,
  CAST(TRY_CAST(f_amount AS DECIMAL(20, 4)) / {int(src.amount_scale)} AS DECIMAL(20, 4)) AS u_amount_orig,
  upper(f_currency) AS u_currency,
  {fx}[upper(f_currency)] AS u_rate
FROM f),
v AS (SELECT *, CASE WHEN u_event_type = 'refund' THEN -abs(u_amount_orig) ELSE u_amount_orig END AS signed
FROM u
WHERE NOT coalesce(
    f_source_event_id IS NULL OR f_account_id IS NULL OR f_event_type IS NULL OR f_event_ts IS NULL
    OR f_creator_id IS NULL
    OR (NOT u_event_type IN ('follow', 'subscribe') AND f_content_id IS NULL)
    OR (f_amount IS NOT NULL AND u_currency IS NULL), false)
  AND NOT coalesce(f_event_type IS NOT NULL AND u_event_type IS NULL, false)
  AND NOT coalesce(f_event_ts IS NOT NULL AND (u_ts IS NULL OR u_ts < TIMESTAMP '{earliest}'), false)
  AND NOT coalesce(u_ts > TIMESTAMP '{latest}', false)
  AND NOT coalesce((f_duration_s IS NOT NULL AND u_duration IS NULL) OR (f_progress IS NOT NULL AND u_progress IS NULL)
                   OR (f_amount IS NOT NULL AND u_amount_orig IS NULL), false)
  AND NOT coalesce(u_duration < 0 OR u_progress < 0 OR u_progress > 1, false)
  AND NOT coalesce(u_currency IS NOT NULL AND u_rate IS NULL, false)
  AND NOT coalesce(u_amount_orig < 0 AND u_event_type <> 'refund', false))
SELECT
  {_q(mapping.name)} || ':' || f_source_event_id AS event_key, {_q(mapping.name)} AS platform,
  f_source_event_id AS source_event_id, f_account_id AS account_id, f_content_id AS content_id,
  f_creator_id AS creator_id, f_category AS category, u_event_type AS event_type, u_ts AS event_ts,
  CAST(u_ts AS DATE) AS event_date, u_duration AS duration_s, u_progress AS progress,
  -- Spark multiplies decimal by the double rate in double precision, then rounds the double's
  -- shortest decimal text half-up (0.05 USD * 7.1 = 0.35499999999999998 -> "0.355" -> 0.36):
  coalesce(CAST(CAST(CAST(signed AS DOUBLE) * u_rate AS VARCHAR) AS DECIMAL(18, 2)),
           CAST(0 AS DECIMAL(18, 2))) AS amount,
  CAST(signed AS DECIMAL(20, 4)) AS amount_orig, u_currency AS currency_orig,
  coalesce(lower(f_is_recommended) IN ({", ".join(_q(t) for t in TRUE_TEXT)}), false) AS is_recommended,
  f_campaign_id AS campaign_id, f_session_id AS session_id
FROM v"""


def ingest(con: duckdb.DuckDBPyConnection, sources: list[tuple[PlatformMapping, list[str]]], cfg: RefineSettings,
           as_of: dt.date, out: Path) -> None:
    sql = "\nUNION ALL\n".join(f"SELECT * FROM ({ingest_sql(m, files, cfg, as_of)})" for m, files in sources)
    con.execute(f"COPY ({sql}) TO {_q(str(out))} (FORMAT parquet)")


# -- aggregate: gold.user_features from silver.events and gold.user_platform_daily ---------------------
def user_features_sql(silver_files: list[str], daily_files: list[str], as_of: dt.date, lookback_days: int,
                      period_days: int) -> str:
    """gold.user_features (transforms/gold.py) as one DuckDB query."""
    start = as_of - dt.timedelta(days=lookback_days - 1)
    recent = as_of - dt.timedelta(days=period_days - 1)
    r1_after, r0_after = as_of - dt.timedelta(days=period_days), as_of - dt.timedelta(days=2 * period_days)
    d = lambda x: f"DATE '{x.isoformat()}'"  # noqa: E731
    read = "event_type IN ('view', 'play')"
    return f"""
WITH lookback AS (
  SELECT * FROM read_parquet({_files(silver_files)}, hive_partitioning = true)
  WHERE event_date BETWEEN {d(start)} AND {d(as_of)}),
history AS (
  SELECT * FROM read_parquet({_files(daily_files)}, hive_partitioning = true) WHERE date <= {d(as_of)}),
seen AS (
  SELECT user_id, min(date) AS first_date, max(date) AS last_date FROM history GROUP BY user_id),
paid AS (
  SELECT user_id, date, CAST(sum(revenue) AS DOUBLE) AS spend FROM history
  WHERE purchases + subscribes > 0 GROUP BY user_id, date),
gaps AS (
  SELECT *, date - lag(date) OVER (PARTITION BY user_id ORDER BY date) AS gap FROM paid),
rhythm AS (
  SELECT user_id, count(*) AS purchase_days,
    CAST({d(as_of)} - max(date) AS INTEGER) AS purchase_recency_days,
    CAST({d(as_of)} - min(date) AS INTEGER) AS purchase_age_days,
    avg(gap) AS ipt_mean_days,
    CASE WHEN count(gap) >= 2 THEN stddev_pop(gap) / avg(gap) END AS ipt_cv,
    avg(CASE WHEN gap IS NOT NULL THEN spend END) AS repeat_spend_mean
  FROM gaps GROUP BY user_id),
trend AS (
  SELECT user_id, CASE WHEN abs(r1) + abs(r0) > 0 THEN (r1 - r0) / (abs(r1) + abs(r0)) END AS spend_trend
  FROM (SELECT user_id,
          coalesce(CAST(sum(CASE WHEN date > {d(r1_after)} THEN revenue END) AS DOUBLE), 0.0) AS r1,
          coalesce(CAST(sum(CASE WHEN date <= {d(r1_after)} THEN revenue END) AS DOUBLE), 0.0) AS r0
        FROM history WHERE date > {d(r0_after)} GROUP BY user_id)),
agg AS (
  SELECT user_id,
    count(DISTINCT event_date) AS active_days, count(*) AS events, count_if({read}) AS reads,
    CAST(sum(amount) AS DOUBLE) AS monetary,
    CAST(coalesce(sum(CASE WHEN event_date >= {d(recent)} THEN amount END), 0) AS DOUBLE) AS monetary_recent,
    count_if(event_type = 'purchase') AS orders,
    CAST(sum(CASE WHEN event_type = 'purchase' THEN amount END) AS DOUBLE) AS _order_value,
    count_if(event_type = 'subscribe') AS subscriptions,
    coalesce(sum(CASE WHEN {read} THEN duration_s END), 0.0) / 3600 AS watch_hours,
    count_if(event_type = 'complete') AS _completes,
    count(DISTINCT platform) AS platforms_used,
    count_if(event_type = 'impression') AS rec_impressions,
    count_if(event_type = 'click') AS _clicks,
    count_if(event_type = 'purchase' AND is_recommended) AS _rec_purchases,
    count_if(event_type = 'refund') AS _refunds,
    count_if(event_type IN ('like', 'comment', 'share', 'follow')) AS social_actions
  FROM lookback GROUP BY user_id),
plat AS (
  SELECT user_id, map_from_entries(list(struct_pack(k := platform, v := share) ORDER BY platform)) AS platform_share
  FROM (SELECT user_id, platform, n / sum(n) OVER (PARTITION BY user_id) AS share
        FROM (SELECT user_id, platform, CAST(count(*) AS DOUBLE) AS n FROM lookback WHERE platform IS NOT NULL GROUP BY ALL))
  GROUP BY user_id),
cat AS (
  SELECT user_id, map_from_entries(list(struct_pack(k := category, v := share) ORDER BY category)) AS category_share
  FROM (SELECT user_id, category, n / sum(n) OVER (PARTITION BY user_id) AS share
        FROM (SELECT user_id, category, CAST(count(*) AS DOUBLE) AS n FROM lookback WHERE category IS NOT NULL GROUP BY ALL))
  GROUP BY user_id),
hhi AS (
  SELECT user_id, sum(s * s) AS creator_hhi
  FROM (SELECT user_id, n / sum(n) OVER (PARTITION BY user_id) AS s
        FROM (SELECT user_id, creator_id, CAST(count(*) AS DOUBLE) AS n FROM lookback
              WHERE {read} AND creator_id IS NOT NULL GROUP BY ALL))
  GROUP BY user_id)
SELECT s.user_id, {d(as_of)} AS as_of_date,
  CAST({d(as_of)} - s.last_date AS INTEGER) AS recency_days,
  CAST({d(as_of)} - s.first_date AS INTEGER) AS tenure_days,
  coalesce(a.active_days, 0) AS active_days, coalesce(a.events, 0) AS events, coalesce(a.reads, 0) AS reads,
  coalesce(a.monetary, 0.0) AS monetary, coalesce(a.monetary_recent, 0.0) AS monetary_recent,
  coalesce(a.orders, 0) AS orders,
  CASE WHEN a.orders > 0 THEN a._order_value / a.orders END AS avg_order_value,
  coalesce(a.subscriptions, 0) AS subscriptions, coalesce(a.watch_hours, 0.0) AS watch_hours,
  CASE WHEN a.reads > 0 THEN a._completes / a.reads END AS completion_rate,
  coalesce(a.platforms_used, 0) AS platforms_used,
  coalesce(p.platform_share, MAP {{}}::MAP(VARCHAR, DOUBLE)) AS platform_share,
  coalesce(c.category_share, MAP {{}}::MAP(VARCHAR, DOUBLE)) AS category_share,
  h.creator_hhi, coalesce(a.rec_impressions, 0) AS rec_impressions,
  CASE WHEN a.rec_impressions > 0 THEN a._clicks / a.rec_impressions END AS rec_ctr,
  CASE WHEN a._clicks > 0 THEN a._rec_purchases / a._clicks END AS rec_conversion,
  CASE WHEN a.orders > 0 THEN a._refunds / a.orders END AS refund_rate,
  coalesce(a.social_actions, 0) AS social_actions,
  coalesce(r.purchase_days, 0) AS purchase_days, r.purchase_recency_days, r.purchase_age_days,
  r.ipt_mean_days, r.ipt_cv,
  CASE WHEN r.ipt_mean_days > 0 THEN r.purchase_recency_days / r.ipt_mean_days END AS overdue,
  r.repeat_spend_mean, t.spend_trend
FROM seen s LEFT JOIN agg a USING (user_id) LEFT JOIN plat p USING (user_id)
  LEFT JOIN cat c USING (user_id) LEFT JOIN hhi h USING (user_id)
  LEFT JOIN rhythm r USING (user_id) LEFT JOIN trend t USING (user_id)"""


def user_features(con: duckdb.DuckDBPyConnection, silver_files: list[str], daily_files: list[str], as_of: dt.date,
                  lookback_days: int, period_days: int, out: Path) -> None:
    sql = user_features_sql(silver_files, daily_files, as_of, lookback_days, period_days)
    con.execute(f"COPY ({sql}) TO {_q(str(out))} (FORMAT parquet)")


# -- checks ------------------------------------------------------------------------------------------
def checksum(path: Path, columns: list[str] | None = None) -> dict[str, float]:
    """Row count and one figure per column of the Parquet output at ``path`` (a file or a folder of
    part files): numbers -> non-null count and sum; timestamps -> sum of epoch ms; text, dates and
    booleans -> sum of a hash of their text; maps -> hash of their sorted keys and sum of values."""
    con = connect()
    glob = str(path / "*.parquet") if path.is_dir() else str(path)
    source = f"read_parquet({_q(glob)})"
    types = {name: str(t) for name, t, *_ in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    wanted = columns or list(types)
    exprs = ["count(*) AS rows"]
    for c in wanted:
        t, q = types[c].upper(), f'"{c}"'
        if t.startswith(("DOUBLE", "FLOAT", "DECIMAL", "INTEGER", "BIGINT", "HUGEINT", "SMALLINT", "TINYINT")):
            exprs += [f"count({q}) AS \"{c}:n\"", f"sum(CAST({q} AS DOUBLE)) AS \"{c}:sum\""]
        elif t.startswith("TIMESTAMP"):
            exprs.append(f"sum(epoch_ms({q})) AS \"{c}:epoch_ms\"")
        elif t.startswith("MAP"):
            exprs += [f"sum(hash(CAST(list_sort(map_keys({q})) AS VARCHAR))) AS \"{c}:keys\"",
                      f"sum(list_sum(map_values({q}))) AS \"{c}:sum\""]
        else:
            exprs.append(f"sum(hash(CAST({q} AS VARCHAR))) AS \"{c}:hash\"")
    row = con.execute(f"SELECT {', '.join(exprs)} FROM {source}").fetchall()[0]
    names = ["rows"] + [e.rsplit(" AS ", 1)[1].strip('"') for e in exprs[1:]]
    return {n: (0 if v is None else v if isinstance(v, int) else float(v)) for n, v in zip(names, row)}


def compare(ours: dict[str, float], theirs: dict[str, float], rel_tol: float = 1e-9) -> list[str]:
    """The figures that differ (sums of floating-point values within ``rel_tol``; the rest exactly)."""
    problems = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key), theirs.get(key)
        if a is None or b is None:
            problems.append(f"{key}: only on one side")
        elif key.endswith(":sum"):
            if not math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-6):
                problems.append(f"{key}: {a!r} vs {b!r}")
        elif a != b:
            problems.append(f"{key}: {a!r} vs {b!r}")
    return problems
