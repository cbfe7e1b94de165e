"""Configuration: conf/base.yaml + conf/<env>.yaml + --set overrides, validated once.

Every job calls :func:`load_settings` at start and passes the typed object down.
A wrong key or value fails there, with the dotted key in the message.
"""
from __future__ import annotations

import datetime as dt
import os
import zipfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from core.errors import ConfigError
from core.sources import PlatformMapping, Strict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Shipped to a cluster as ipsynergy.zip (`make package`, spark-submit --py-files): the code and
# conf/ are read from inside the zip, and relative lake paths resolve against the working directory.
PACKAGED = PROJECT_ROOT.is_file()
if "IPSYNERGY_CONF_DIR" in os.environ:
    CONF_DIR: Path | zipfile.Path = Path(os.environ["IPSYNERGY_CONF_DIR"])
else:
    CONF_DIR = zipfile.Path(PROJECT_ROOT, "conf/") if PACKAGED else PROJECT_ROOT / "conf"
# The demo platforms: what the generator writes and the demo pipeline reads. A user's own
# mappings live in a folder of their own (platforms_dir, --platforms DIR).
DEMO_PLATFORMS_DIR = CONF_DIR / "platforms"
LAKE_ROOT_ENV = "IPSYNERGY_LAKE_ROOT"


class LakeSettings(Strict):
    root: str = "lake"
    raw: str | None = None


class SparkSettings(Strict):
    app_name: str = "ipsynergy"
    master: str | None = None
    shuffle_partitions: int = Field(8, ge=1)
    ui: bool = False
    conf: dict[str, str] = {}

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        return {str(k): str(x) for k, x in v.items()} if isinstance(v, dict) else v


class GenerateSettings(Strict):
    seed: int = 7
    # btyd: cohorts, gamma rates, beta dropout, weekday rhythm; steady: everyone from day one
    # at a steady rate (see transforms/generate.py).
    dynamics: Literal["btyd", "steady"] = "steady"
    users: int = Field(3000, ge=10)
    creators: int = Field(120, ge=4)
    items_per_creator: int = Field(4, ge=1)
    sessions: int = Field(180_000, ge=100)
    start_date: dt.date = dt.date(2026, 1, 1)
    days: int = Field(181, ge=1)
    defect_rate: float = Field(0.01, ge=0.0, le=0.5)
    files_per_platform: int = Field(2, ge=1)


class RefineSettings(Strict):
    base_currency: str = "CNY"
    fx_to_base: dict[str, float] = {"CNY": 1.0}
    future_tolerance_hours: int = Field(24, ge=0)
    earliest_valid_date: dt.date = dt.date(2015, 1, 1)
    hmac_key_env: str = "IPSYNERGY_HMAC_KEY"
    # Hashing identifiers with the public development key is refused unless the lake holds
    # generated data (the generator's truth tables) or this is set.
    allow_development_key: bool = False
    # A batch with a larger share quarantined stops the pipeline before aggregate.
    max_quarantine_share: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _base_in_fx(self) -> "RefineSettings":
        if self.fx_to_base.get(self.base_currency) != 1.0:
            raise ValueError(f"fx_to_base must map the base currency {self.base_currency} to 1.0")
        return self


class GoldSettings(Strict):
    # user_features, Q(C) and E(P, C) look back this many days, ending at as_of.
    lookback_days: int = Field(90, ge=1)
    # K, R, X, R_C, R_P and the recent-revenue feature cover this many days ending at as_of.
    period_days: int = Field(30, ge=1)
    # Weights of the Q(C) signals (each ranked within the creator's category).
    quality_weights: dict[Literal["completion", "engagement", "repeat", "conversion", "retention"], float] = {
        "completion": 1.0, "engagement": 1.0, "repeat": 1.0, "conversion": 1.0, "retention": 1.0}

    @model_validator(mode="after")
    def _window(self) -> "GoldSettings":
        if self.period_days > self.lookback_days:
            raise ValueError("period_days must not exceed lookback_days")
        if not self.quality_weights or any(w < 0 for w in self.quality_weights.values()) \
                or sum(self.quality_weights.values()) <= 0:
            raise ValueError("quality_weights must be non-negative with a positive sum")
        return self


class MlflowSettings(Strict):
    # null: an SQLite store beside the lake (<lake root>/mlflow.db); or http://host:port.
    tracking_uri: str | None = None
    # null: <lake root>/mlartifacts (used when an experiment is first created).
    artifact_root: str | None = None
    experiment_prefix: str = "ipsynergy"


class PersonaSettings(Strict):
    k_min: int = Field(3, ge=2)
    k_max: int = Field(8, ge=2)
    # K-means restarts per candidate k (different seeds); the lowest cost wins.
    restarts: int = Field(2, ge=1)
    seed: int = 11
    max_iter: int = Field(60, ge=5)
    init_steps: int = Field(5, ge=1)
    tol: float = Field(1e-2, gt=0)
    # A candidate k is acceptable when its smallest persona holds at least min_share of the
    # users and two fits on bootstrap samples agree with it (adjusted Rand index) at least
    # min_stability; among those the best silhouette wins.
    min_share: float = Field(0.03, ge=0, lt=1)
    min_stability: float = Field(0.75, ge=-1, le=1)
    bootstrap_fraction: float = Field(0.8, gt=0, le=1)
    # K-means input is hash-partitioned by user into this many partitions, whatever the cluster.
    partitions: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _range(self) -> "PersonaSettings":
        if self.k_max < self.k_min:
            raise ValueError("k_max must be >= k_min")
        return self


class NetSettings(Strict):
    """Hyperparameters of the torch revenue regressor (one sweep entry overrides some of them)."""
    # ziln: zero-inflated lognormal likelihood; tweedie: Tweedie deviance (power 1.5), log link.
    loss: Literal["ziln", "tweedie"] = "ziln"
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = Field(0.1, ge=0, lt=1)
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    batch_size: int = Field(256, ge=8)
    max_epochs: int = Field(120, ge=1)
    # Stop when the validation loss has not improved for this many epochs (best weights kept).
    patience: int = Field(12, ge=1)

    @field_validator("hidden")
    @classmethod
    def _layers(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(n < 1 for n in v):
            raise ValueError("hidden must list at least one positive layer width")
        return v


class TrainSettings(Strict):
    # Label: net revenue in the horizon_days after the feature date t.
    horizon_days: int = Field(30, ge=1)
    # Training feature dates: `windows` dates, window_step_days apart, the latest one
    # horizon_days before the test date (as_of - horizon_days), so no training label
    # overlaps the test label window.
    windows: int = Field(4, ge=1)
    window_step_days: int = Field(7, ge=1)
    # A training date needs at least this much history before it (default: a full lookback,
    # so that training features are computed like the test date's).
    min_history_days: int = Field(90, ge=0)
    # Rows kept for training (with validation), and for test, by stratified sampling (persona x
    # payer); weights undo the sampling.
    sample_cap: int = Field(200_000, ge=100)
    # Customers (users with a paid day) whose RFM summary the BTYD baseline is fitted on, per
    # feature date; above it, a hash sample of them. Only that summary reaches the driver.
    btyd_sample_cap: int = Field(200_000, ge=100)
    # Users are split into this many folds; one network per fold is early-stopped on it and
    # the ensemble averages them.
    folds: int = Field(5, ge=2)
    seed: int = 5
    net: NetSettings = NetSettings()
    # `jobs.train --sweep` runs one configuration per entry: net overrides, e.g. {hidden: [128, 64]}.
    sweep: list[dict[str, Any]] = [{"hidden": (32,)}, {"hidden": (128, 64), "dropout": 0.2}, {"loss": "tweedie"}]

    @model_validator(mode="after")
    def _sweep_keys(self) -> "TrainSettings":
        self.sweep_nets()
        return self

    def sweep_nets(self) -> list[NetSettings]:
        """One NetSettings per sweep entry: ``net`` with the entry's overrides."""
        nets = []
        for i, entry in enumerate(self.sweep):
            try:
                nets.append(NetSettings.model_validate({**self.net.model_dump(), **entry}))
            except ValidationError as err:
                e = err.errors()[0]
                raise ValueError(f"sweep[{i}].{'.'.join(map(str, e['loc']))}: {e['msg']}") from None
        return nets


class Settings(Strict):
    env: str = "local"
    as_of: dt.date
    lake: LakeSettings = LakeSettings()
    spark: SparkSettings = SparkSettings()
    generate: GenerateSettings = GenerateSettings()
    refine: RefineSettings = RefineSettings()
    gold: GoldSettings = GoldSettings()
    personas: PersonaSettings = PersonaSettings()
    mlflow: MlflowSettings = MlflowSettings()
    train: TrainSettings = TrainSettings()
    # The folder of platform mappings (<name>.yaml each); null: the demo mappings in conf/platforms.
    platforms_dir: str | None = None
    # The mappings of platforms_dir, validated with the rest (filled by load_settings).
    platforms: dict[str, PlatformMapping] = {}

    # -- derived locations -------------------------------------------------
    @property
    def lake_root(self) -> str:
        return resolve_location(os.environ.get(LAKE_ROOT_ENV) or self.lake.root)

    @property
    def raw_root(self) -> str:
        return resolve_location(self.lake.raw) if self.lake.raw else f"{self.lake_root}/raw"

    @model_validator(mode="after")
    def _tracking_store(self) -> "Settings":
        if not self.mlflow.tracking_uri and "://" in self.lake_root:
            raise ValueError("mlflow.tracking_uri must be set when the lake is not on a local disk (the default "
                             "SQLite store needs a local file), e.g. --set mlflow.tracking_uri=http://host:5000")
        return self

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.lake_root}/mlflow.db"

    @property
    def artifact_root(self) -> str | None:
        """Where new experiments keep artifacts: the configured root; none with a tracking server
        (the server stores them, `mlflow server --artifacts-destination`); else beside the lake."""
        if self.mlflow.artifact_root:
            return self.mlflow.artifact_root
        if self.tracking_uri.startswith(("http://", "https://")):
            return None
        return f"{self.lake_root}/mlartifacts"

    def table_path(self, layer: str, name: str) -> str:
        return f"{self.lake_root}/{layer}/{name}"


def resolve_location(location: str) -> str:
    """A URI stays as it is; a local path becomes absolute (relative to the project root, or to
    the working directory when the code runs from the packaged zip)."""
    if "://" in location:
        return location.rstrip("/")
    path = Path(location)
    return str(path if path.is_absolute() else ((Path.cwd() if PACKAGED else PROJECT_ROOT) / path).resolve())


# -- loading -----------------------------------------------------------------
def _yaml_files(directory: Path | zipfile.Path) -> list:
    return sorted((p for p in directory.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name) \
        if directory.exists() else []


def _read_yaml(path: Path | zipfile.Path) -> dict:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _apply_set(data: dict, assignment: str) -> dict:
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else None
    node: dict = {}
    override = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return _merge(data, override)


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        # a check of the whole file (no key) would echo all of it
        lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})" if key else f"  {e['msg']}")
    return "\n".join(lines)


def load_settings(env: str = "local", overrides: list[str] | tuple[str, ...] = (), as_of: dt.date | None = None) -> Settings:
    """Load base + env overlay + overrides into a validated :class:`Settings`."""
    data = _read_yaml(CONF_DIR / "base.yaml")
    env_file = CONF_DIR / f"{env}.yaml"
    if not env_file.exists():
        known = sorted(p.stem for p in _yaml_files(CONF_DIR) if p.stem != "base")
        raise ConfigError(f"unknown --env {env!r}: no {env_file.name} in {CONF_DIR} (known: {', '.join(known)})")
    data = _merge(data, _read_yaml(env_file))
    for assignment in overrides:
        data = _apply_set(data, assignment)
    data["env"] = env
    data["platforms"] = load_platforms(platforms_folder(data.get("platforms_dir")))
    if as_of is not None:
        data["as_of"] = as_of
    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, f"conf/base.yaml + conf/{env}.yaml + --set")) from None


def platforms_folder(location: str | None) -> Path | zipfile.Path:
    """The mappings folder: ``location`` (relative to the working directory), else the demo one."""
    if not location:
        return DEMO_PLATFORMS_DIR
    folder = Path(location).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"platforms_dir {location!r}: no such folder (it should hold one <platform>.yaml "
                          f"mapping per platform; see README 'Use your own data')")
    return folder


def load_platforms(directory: Path | zipfile.Path | None = None) -> dict[str, PlatformMapping]:
    """Every <name>.yaml of the folder (default: the demo mappings), validated; the file name
    must match its ``name``."""
    directory = directory or DEMO_PLATFORMS_DIR
    mappings: dict[str, PlatformMapping] = {}
    for path in _yaml_files(directory):
        try:
            mapping = PlatformMapping.model_validate(_read_yaml(path))
        except ValidationError as err:
            shown = f"conf/platforms/{path.name}" if directory == DEMO_PLATFORMS_DIR else str(path)
            raise ConfigError(_describe(err, shown)) from None
        if mapping.name != path.stem:
            raise ConfigError(f"{path.name}: name {mapping.name!r} must equal the file name {path.stem!r}")
        mappings[mapping.name] = mapping
    if not mappings:
        raise ConfigError(f"no platform mappings found in {directory}")
    return mappings

