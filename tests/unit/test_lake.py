"""core.lake: a table written by an older release (the contract gained columns since), and row
counts read from the Delta log."""
from dataclasses import replace

import pytest
from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

from core import lake
from core.tables import Table
from tests.conftest import make_settings

OLD = Table("gold", "evolving", StructType([StructField("user_id", StringType(), False),
                                            StructField("monetary", DoubleType(), False)]), keys=("user_id",))


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path / "lake")


def test_a_table_written_before_gains_the_new_nullable_columns(spark, settings):
    # GIVEN a table written under the older contract
    lake.overwrite(spark, settings, OLD, spark.createDataFrame([("u1", 5.0)], OLD.schema))
    new = replace(OLD, schema=StructType([*OLD.schema.fields, StructField("purchase_days", LongType(), True),
                                          StructField("ipt_cv", DoubleType(), True)]))
    # WHEN the new release writes rows of the new contract beside them
    lake.upsert(spark, settings, new, spark.createDataFrame([("u2", 7.0, 3, 0.5)], new.schema))
    # THEN the old row reads null in the new columns, the new row has its values
    rows = {r.user_id: r.asDict() for r in lake.read(spark, settings, new).collect()}
    assert rows == {"u1": {"user_id": "u1", "monetary": 5.0, "purchase_days": None, "ipt_cv": None},
                    "u2": {"user_id": "u2", "monetary": 7.0, "purchase_days": 3, "ipt_cv": 0.5}}


def test_a_new_column_that_is_not_nullable_is_refused_naming_it(spark, settings):
    lake.overwrite(spark, settings, OLD, spark.createDataFrame([("u1", 5.0)], OLD.schema))
    strict = replace(OLD, schema=StructType([*OLD.schema.fields, StructField("purchase_days", LongType(), False)]))
    with pytest.raises(ValueError, match=r"gold\.evolving: columns \['purchase_days'\] .* must be nullable"):
        lake.ensure(spark, settings, strict)


def test_row_counts_come_from_the_delta_log_not_the_files(spark, settings):
    """The pipeline ends by counting every table: the count must be answered from the log's
    per-file statistics, not by scanning the data (silver.events at 10^8 events)."""
    lake.overwrite(spark, settings, OLD, spark.createDataFrame([(f"u{i}", 1.0) for i in range(7)], OLD.schema))
    lake.upsert(spark, settings, OLD, spark.createDataFrame([("u1", 2.0), ("u9", 3.0)], OLD.schema))
    assert lake.row_count(spark, settings, OLD) == 8
    plan = lake.read(spark, settings, OLD).groupBy().count()._jdf.queryExecution().executedPlan().toString()
    assert "LocalTableScan" in plan and "FileScan" not in plan, plan


def test_reading_a_table_not_written_yet_names_it_and_the_fix(spark, settings):
    from core.errors import MissingInput

    with pytest.raises(MissingInput, match=r"table gold\.evolving not found at .*: run the job that writes it first"):
        lake.read(spark, settings, OLD)
    with pytest.raises(MissingInput, match=r"table gold\.evolving not found at .*: run the job that writes it first"):
        lake.version(spark, settings, OLD)
