import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from transforms import identity

KEY = b"test-key"


def test_hmac_matches_the_standard_library(spark):
    # GIVEN messages, including non-ASCII WHEN hashed in Spark THEN equal to Python's hmac module
    msgs = ["13800000000", "a@b.example", "oU-union-1", "手机号"]
    df = spark.createDataFrame([(m,) for m in msgs], "m string")
    got = {r.m: r.h for r in df.select("m", identity.hmac_sha256(F.col("m"), KEY).alias("h")).collect()}
    assert got == {m: identity.hmac_reference(m, KEY) for m in msgs}
    long_key = b"k" * 100  # keys longer than a block are hashed first (RFC 2104)
    row = df.limit(1).select(identity.hmac_sha256(F.col("m"), long_key).alias("h")).first()
    assert row.h == identity.hmac_reference(msgs[0], long_key)


def test_phone_and_email_normalisation(spark):
    df = spark.createDataFrame([("+86 138-0000-1111", " A@B.Example "), ("008613800001111", None),
                                ("13800001111", ""), ("+1 (415) 555-0100", "x@y.z")], "p string, e string")
    got = df.select(identity.normalise_phone(F.col("p")).alias("p"), identity.normalise_email(F.col("e")).alias("e")).collect()
    assert [(r.p, r.e) for r in got] == [("13800001111", "a@b.example"), ("13800001111", None),
                                         ("13800001111", None), ("14155550100", "x@y.z")]


@pytest.fixture
def accounts(spark):
    # a1 ~ b1 share a phone (formatted differently); b1 ~ c1 share an email: one person of three accounts.
    # d1 has a union id nobody else has; e1 has no identifier at all.
    rows = [
        ("alpha", "a1", "+86 138-0000-1111", None, None),
        ("beta", "b1", "13800001111", "Same@Mail.example", None),
        ("gamma", "c1", None, "same@mail.example", None),
        ("alpha", "d1", None, None, "oU-d"),
        ("beta", "e1", None, None, None),
    ]
    return spark.createDataFrame(rows, "platform string, account_id string, phone string, email string, union_id string")


def test_components_join_accounts_that_share_an_identifier_and_only_those(spark, accounts):
    edges = identity.identifier_edges(accounts, KEY)
    comps = identity.connected_components(accounts, edges)
    expected = spark.createDataFrame([
        ("alpha", "a1", "alpha:a1", 1), ("beta", "b1", "alpha:a1", 2), ("gamma", "c1", "alpha:a1", 1),
        ("alpha", "d1", "alpha:d1", 1), ("beta", "e1", "beta:e1", 0),
    ], "platform string, account_id string, component string, identifier_count long")
    assert_df_equality(comps, expected, ignore_row_order=True, ignore_nullable=True)


def test_edges_carry_no_raw_identifier(spark, accounts):
    edges = identity.identifier_edges(accounts, KEY).collect()
    text = " ".join(r.ident for r in edges)
    assert "13800001111" not in text and "mail.example" not in text and "oU-d" not in text
    assert {r.ident.split(":")[0] for r in edges} == {"phone", "email", "union"}


def test_user_ids_are_stable_when_components_merge(spark, accounts):
    # GIVEN a first run where a1 and d1 were separate people
    first = identity.assign_user_ids(
        identity.connected_components(accounts, identity.identifier_edges(accounts, KEY)), None)
    ids = {r.account_id: r.user_id for r in first.collect()}
    assert ids["a1"] == ids["b1"] == ids["c1"] != ids["d1"] != ids["e1"]
    # WHEN a new account links d1 to the a1 person
    more = accounts.unionByName(spark.createDataFrame(
        [("gamma", "f1", "13800001111", None, "oU-d")], accounts.schema))
    second = identity.assign_user_ids(
        identity.connected_components(more, identity.identifier_edges(more, KEY)), first)
    ids2 = {r.account_id: r.user_id for r in second.collect()}
    # THEN everyone of the merged person carries the smaller of the existing ids, and e1 keeps its own
    merged = min(ids["a1"], ids["d1"])
    assert {ids2[a] for a in ("a1", "b1", "c1", "d1", "f1")} == {merged}
    assert ids2["e1"] == ids["e1"]
