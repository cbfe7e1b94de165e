"""The raw-source contract: the unified event vocabulary and the platform-mapping models that
say how one platform's export (events, and optionally accounts) maps onto it.

A mapping is one conf/platforms/<name>.yaml (or a file of the user's own folder); the loader
is in :mod:`core.settings`. Everything that names event types or fields (gold's counts, the
events table's CHECK constraint, the generator) derives from the tuples here.
"""
from __future__ import annotations

import codecs
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

UNIFIED_EVENT_TYPES = (
    "impression", "click", "view", "play", "complete", "like", "comment",
    "share", "follow", "purchase", "subscribe", "refund",
)
EVENT_FIELDS = (
    "source_event_id", "account_id", "content_id", "creator_id", "category", "event_type",
    "event_ts", "duration_s", "progress", "amount", "currency", "is_recommended",
    "campaign_id", "session_id",
)
ACCOUNT_FIELDS = ("account_id", "phone", "email", "union_id")


class Strict(BaseModel):
    """A settings or mapping model: unknown keys are errors, values are frozen."""
    model_config = ConfigDict(extra="forbid", frozen=True)


class Const(Strict):
    const: str


FieldSource = str | Const


class TimestampSpec(Strict):
    format: str = Field(description="epoch_ms, epoch_s, iso8601, or a Spark datetime pattern")
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Asia/Shanghai)") from exc
        return v


class SourceSpec(Strict):
    path: str = ""  # informational: the files are read from <input>/<platform>/events and /accounts
    reader: dict[str, str] = {}
    columns: list[str] | None = None  # CSV column order (the header)
    fields: dict[str, FieldSource]

    @property
    def separator(self) -> str:
        """The CSV field separator (Spark's reader option sep, or its alias delimiter)."""
        return self.reader.get("sep", self.reader.get("delimiter", ","))


class EventSource(SourceSpec):
    timestamp: TimestampSpec
    amount_scale: int = Field(1, ge=1)
    progress_scale: float = Field(1.0, gt=0)
    # Source value -> unified type. A value that already is a unified type needs no entry.
    event_types: dict[str, Literal[UNIFIED_EVENT_TYPES]] = {}  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _fields_known(self) -> "EventSource":
        _check_fields(self.fields, EVENT_FIELDS, required=("source_event_id", "account_id", "event_type", "event_ts"))
        if "amount" in self.fields and "currency" not in self.fields:
            raise ValueError("fields.amount needs fields.currency: a column, or a constant such as {const: CNY}")
        if isinstance(self.fields.get("event_type"), Const) and self.fields["event_type"].const not in self.vocabulary:
            raise ValueError(f"fields.event_type: the constant {self.fields['event_type'].const!r} is neither a "
                             f"unified event type {list(UNIFIED_EVENT_TYPES)} nor a key of event_types")
        return self

    @property
    def vocabulary(self) -> dict[str, str]:
        """Every source value this mapping understands: the unified names themselves, then event_types."""
        return {**{t: t for t in UNIFIED_EVENT_TYPES}, **self.event_types}


class AccountSource(SourceSpec):
    @model_validator(mode="after")
    def _fields_known(self) -> "AccountSource":
        _check_fields(self.fields, ACCOUNT_FIELDS, required=("account_id",))
        return self


class PlatformMapping(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    format: Literal["json", "csv", "parquet"]
    # Text encoding of the csv / json files, by its Python codec name (utf-8, gb18030, gbk,
    # utf-16, latin-1, cp1252, cp932 ...). A byte-order mark is stripped whatever the encoding.
    encoding: str = "utf-8"
    events: EventSource
    # Optional: without an account export every account is its own person.
    accounts: AccountSource | None = None

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            return codecs.lookup(v).name
        except LookupError:
            raise ValueError(f"unknown encoding {v!r} (e.g. utf-8, gb18030, gbk, utf-16, latin-1)") from None

    @property
    def charset(self) -> str:
        """The encoding as Spark (Java) names it."""
        return java_charset(self.encoding)

    @property
    def parts(self) -> dict[str, SourceSpec]:
        """The exports this mapping describes, by the folder they sit in."""
        return {"events": self.events, **({"accounts": self.accounts} if self.accounts else {})}

    @model_validator(mode="after")
    def _csv_has_columns(self) -> "PlatformMapping":
        for kind, part in self.parts.items():
            if self.format == "csv" and not part.columns:
                raise ValueError(f"{kind}: a csv mapping must list its columns (the header, in order)")
            if self.format == "csv":
                missing = {v for v in part.fields.values() if isinstance(v, str)} - set(part.columns or [])
                if missing:
                    raise ValueError(f"{kind}.fields refer to columns not in {kind}.columns: {sorted(missing)}")
        return self


# Python codec names whose Java name differs (Java knows the rest under the Python name).
_JAVA_CHARSETS = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "cp932": "windows-31j", "cp949": "x-windows-949",
                  "mac-roman": "x-MacRoman", "utf-16": "UTF-16", "utf-16-le": "UTF-16LE", "utf-16-be": "UTF-16BE",
                  "utf-32": "UTF-32", "utf-32-le": "UTF-32LE", "utf-32-be": "UTF-32BE", "iso8859-1": "ISO-8859-1",
                  "cp1252": "windows-1252", "ascii": "US-ASCII", "euc_jp": "EUC-JP", "euc_kr": "EUC-KR",
                  "shift_jis": "Shift_JIS", "big5": "Big5", "gb2312": "GB2312", "gbk": "GBK", "gb18030": "GB18030"}


def java_charset(encoding: str) -> str:
    """The Java charset name of a Python codec name (what Spark's decode() takes)."""
    name = codecs.lookup(encoding).name
    return _JAVA_CHARSETS.get(name, name)


def _check_fields(fields: dict, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    unknown = set(fields) - set(allowed)
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}; allowed: {list(allowed)}")
    missing = [f for f in required if f not in fields]
    if missing:
        raise ValueError(f"required fields missing: {missing}")
