"""The generator's planted truth: who each account really is, the creators' quality, the
platforms' promotion, the defects planted in the exports and, with generate.dynamics: btyd, each
person's parameters. Written beside the lake by `ipsynergy generate`; read only by this
package's comparisons, never by the pipeline."""
from __future__ import annotations

from pyspark.sql.types import DateType, DoubleType, IntegerType, LongType, StringType, TimestampType

from core.tables import Table, struct

TRUTH_ACCOUNTS = Table(
    "truth", "accounts",
    struct(("platform", StringType(), False), ("account_id", StringType(), False),
           ("person_id", LongType(), False), ("persona", StringType(), False)),
    keys=("platform", "account_id"),
)
# The btyd dynamics' parameters of each person with sessions (generate.dynamics: btyd), from
# which evaluation.generator.expected_revenue gives anyone's expected spend over a horizon.
TRUTH_PEOPLE = Table(
    "truth", "people",
    struct(("person_id", LongType(), False), ("persona", StringType(), False), ("acquired_on", DateType(), False),
           ("rate_per_day", DoubleType(), False), ("dropout_p", DoubleType(), False),
           ("spend_scale", DoubleType(), False), ("sessions", IntegerType(), False),
           ("left_at", TimestampType(), True), ("spend_per_session", DoubleType(), False)),
    keys=("person_id",),
)
TRUTH_CREATORS = Table(
    "truth", "creators",
    struct(("creator_id", StringType(), False), ("quality", DoubleType(), False), ("category", StringType(), False)),
    keys=("creator_id",),
)
TRUTH_PLATFORMS = Table(
    "truth", "platforms", struct(("platform", StringType(), False), ("promotion", DoubleType(), False)), keys=("platform",),
)
TRUTH_DEFECTS = Table(
    "truth", "defects",
    struct(("platform", StringType(), False), ("source_event_id", StringType(), False), ("defect", StringType(), False)),
    keys=("platform", "source_event_id", "defect"),
)
