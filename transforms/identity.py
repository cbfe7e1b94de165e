"""Identity stitching: platform accounts that share a phone, email or union id are one person.

Identifiers are normalised, then pseudonymised with HMAC-SHA256 (built from Spark's ``sha2``
per RFC 2104, so no raw identifier leaves this module and no Python UDF runs). Accounts and
hashed identifiers form a bipartite graph; its connected components are people, found by
min-label propagation with DataFrame joins (GraphX has no Python API).
"""
from __future__ import annotations

import hashlib
import hmac as _hmac
import logging

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from core.tables import IDENTITY_MAP, select_contract

log = logging.getLogger(__name__)
BLOCK = 64  # SHA-256 block size in bytes


def hmac_sha256(message: Column, key: bytes) -> Column:
    """HMAC-SHA256(key, message) as lowercase hex, with Spark built-ins only."""
    if len(key) > BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(BLOCK, b"\0")
    ipad = bytes(b ^ 0x36 for b in key)
    opad = bytes(b ^ 0x5C for b in key)
    inner = F.unhex(F.sha2(F.concat(F.lit(bytearray(ipad)), F.encode(message, "UTF-8")), 256))
    return F.sha2(F.concat(F.lit(bytearray(opad)), inner), 256)


def hmac_reference(message: str, key: bytes) -> str:
    """The standard library's HMAC, used by tests to check :func:`hmac_sha256`."""
    return _hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()


def normalise_phone(c: Column) -> Column:
    """Digits only, without a +86 / 0086 country prefix on a mainland mobile number."""
    digits = F.regexp_replace(c, r"[^0-9]", "")
    digits = F.regexp_replace(digits, r"^(0086|86)(1[0-9]{10})$", "$2")
    return F.nullif(digits, F.lit(""))


def normalise_email(c: Column) -> Column:
    return F.nullif(F.lower(F.trim(c)), F.lit(""))


def user_id_for(platform: Column, account_id: Column) -> Column:
    """The user id of a component whose smallest account node is (platform, account_id)."""
    return F.concat(F.lit("u"), F.substring(F.sha2(F.concat_ws(":", F.lit("acct"), platform, account_id), 256), 1, 16))


def identifier_edges(accounts: DataFrame, key: bytes) -> DataFrame:
    """(platform, account_id, ident) with ident = kind:HMAC(normalised value); raw values dropped here."""
    kinds = {
        "phone": normalise_phone(F.col("phone")),
        "email": normalise_email(F.col("email")),
        "union": F.nullif(F.trim(F.col("union_id")), F.lit("")),
    }
    stacked = F.explode(F.array(*[
        F.struct(F.lit(k).alias("kind"), v.alias("value")) for k, v in kinds.items()
    ]))
    edges = accounts.select("platform", "account_id", stacked.alias("i")).where(F.col("i.value").isNotNull())
    return edges.select("platform", "account_id",
                        F.concat(F.col("i.kind"), F.lit(":"), hmac_sha256(F.col("i.value"), key)).alias("ident")).distinct()


def connected_components(accounts: DataFrame, edges: DataFrame, max_iterations: int = 50) -> DataFrame:
    """(platform, account_id, component, identifier_count): component = smallest account node reachable."""
    node = F.concat_ws(":", F.col("platform"), F.col("account_id"))
    acc = accounts.select("platform", "account_id").distinct().withColumn("node", node)
    e = edges.withColumn("node", node).select("node", "ident").cache()
    labels = acc.select("node", F.col("node").alias("label")).cache()
    for i in range(max_iterations):
        ident_label = e.join(labels, "node", "inner").groupBy("ident").agg(F.min("label").alias("label"))
        via = e.join(ident_label, "ident", "inner").groupBy("node").agg(F.min("label").alias("via"))
        new = (labels.join(via, "node", "left")
                     .select("node", F.least("label", F.coalesce("via", "label")).alias("label"))
                     .localCheckpoint())
        changed = new.join(labels.withColumnRenamed("label", "old"), "node").where(F.col("label") != F.col("old")).count()
        labels.unpersist()
        labels = new
        if changed == 0:
            log.info("identity: components converged after %d iteration(s)", i + 1)
            break
    else:
        raise RuntimeError(f"identity: components did not converge in {max_iterations} iterations")
    counts = e.groupBy("node").agg(F.count("*").alias("identifier_count"))
    out = (acc.join(labels, "node", "inner").join(counts, "node", "left")
              .select("platform", "account_id", F.col("label").alias("component"),
                      F.coalesce("identifier_count", F.lit(0)).cast("long").alias("identifier_count")))
    e.unpersist()
    return out


def assign_user_ids(components: DataFrame, previous: DataFrame | None) -> DataFrame:
    """Stable global user ids: a component keeps the smallest user id its accounts already had;
    a new component gets the id derived from its smallest account node."""
    parts = F.split(F.col("component"), ":", 2)
    fresh = user_id_for(parts.getItem(0), parts.getItem(1))
    df = components.withColumn("fresh", fresh)
    if previous is not None:
        prev = previous.select("platform", "account_id", F.col("user_id").alias("prev_id"))
        kept = (df.join(prev, ["platform", "account_id"], "left").groupBy("component")
                  .agg(F.min("prev_id").alias("kept")))
        df = df.join(kept, "component", "left").withColumn("user_id", F.coalesce("kept", "fresh"))
    else:
        df = df.withColumn("user_id", F.col("fresh"))
    return select_contract(df, IDENTITY_MAP)
