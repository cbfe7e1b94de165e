"""PII: no raw phone, email or union id in silver, gold, job logs or MLflow (params, tags,
metrics, artifacts); the HMAC key comes from the environment and appears nowhere; every
MLflow server the project starts listens on 127.0.0.1 only.

The raw identifiers searched for are the ones the platforms actually exported (read back
from bronze.accounts_raw, which keeps records as received), in the forms they were exported
in and normalised (digits only, lower case)."""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from core import lake, tables
from core.errors import ConfigError
from core.settings import PROJECT_ROOT
from core.tables import ACCOUNTS_RAW
from jobs import aggregate, generate, ingest, personas, refine, train
from jobs.cli import Summary
from tests.conftest import SMALL, make_settings
from tests.reliability.helpers import child_env, job_command, tally, write_accounts, write_events, write_records

KEY = "hmac-secret-4f1c9e7a2b"  # the key given to the child jobs: must appear nowhere
GOLD = [t for t in vars(tables).values() if isinstance(t, tables.Table) and t.layer in ("silver", "gold")]


def raw_identifiers(spark, settings) -> dict[str, set[str]]:
    """phone (digits, without +86), email (lower case) and union id values in the raw account exports."""
    text = " ".join(r.raw for r in lake.read(spark, settings, ACCOUNTS_RAW).where(F.col("raw").isNotNull()).collect())
    phones = {re.sub(r"[^0-9]", "", p)[-11:] for p in
              re.findall(r"(?<![0-9A-Za-z])(?:\+86[ -]?)?1[3-9][0-9][ -]?[0-9]{4}[ -]?[0-9]{4}(?![0-9A-Za-z])", text)}
    emails = {e.lower() for e in re.findall(r"[A-Za-z0-9._+-]+@[A-Za-z0-9.-]+\.[A-Za-z]+", text)}
    unions = set(re.findall(r"oU[0-9a-f]{26}", text))
    return {"phone": phones, "email": emails, "union": unions}


class Scanner:
    """Finds raw identifiers (and the HMAC key) in text: phones also with separators removed."""

    def __init__(self, ids: dict[str, set[str]], key: str | None = None):
        self.ids = ids
        self.phone = re.compile(r"(?<![0-9])(" + "|".join(sorted(ids["phone"])) + r")(?![0-9])")
        self.words = sorted(ids["email"] | {u.lower() for u in ids["union"]} | ({key.lower()} if key else set()))

    def hits(self, text: str) -> list[str]:
        """The identifiers found in ``text`` (counted in the suite's figures as PII hits)."""
        low = text.lower()
        digits = re.sub(r"(?<=[0-9])[ -](?=[0-9])", "", low)
        found = self.phone.findall(digits) + [w for w in self.words if w in low]
        tally("PII hits", len(found))
        tally("texts scanned for PII", 1)
        return found


def table_text(spark, settings, table) -> str:
    """Every string (also inside maps and arrays) of the table, as one text."""
    df = lake.read(spark, settings, table)
    cols = [F.to_json(F.col(f.name)) if f.dataType.typeName() in ("map", "array", "struct") else F.col(f.name)
            for f in df.schema.fields if f.dataType.typeName() in ("string", "map", "array", "struct")]
    if not cols:
        return ""
    return "\n".join("|".join(v for v in r if v) for r in df.select(*cols).collect())


def files_text(root: Path) -> str:
    """Every file under root, decoded leniently (binary files too: a raw identifier would show)."""
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in sorted(root.rglob("*")) if p.is_file())


# -- MLflow servers ----------------------------------------------------------------------------

# How the project starts an MLflow server: a make recipe or shell line (``mlflow ui ...``,
# ``mlflow server ...``), or a Python argument list (``["mlflow", "server", ...]``, also
# through ``-m mlflow``).
SHELL_COMMAND = re.compile(r"(?:^|[\s/])mlflow\s+(?:ui|server)\b.*$", re.M)
PY_COMMAND = re.compile(r"""["']mlflow["']\s*,\s*["'](?:ui|server)["'][^\]]*""")


def test_every_mlflow_server_the_project_starts_binds_to_loopback():
    shell = [PROJECT_ROOT / "Makefile", *sorted((PROJECT_ROOT / ".ci").glob("*")), *sorted(PROJECT_ROOT.rglob("scripts/*.sh"))]
    python = sorted(p for package in ("jobs", "core") for p in (PROJECT_ROOT / package).glob("*.py"))
    commands = [(p.name, m.group(0)) for p in shell if p.is_file()
                for m in SHELL_COMMAND.finditer(p.read_text().replace("\\\n", " "))]
    commands += [(p.name, m.group(0)) for p in python for m in PY_COMMAND.finditer(p.read_text())]
    assert any(name == "tracking.py" for name, _ in commands)  # make mlflow-ui (core/tracking.py: ui_command)
    assert any(name == "deploy.py" for name, _ in commands)  # make cluster-up's tracking server
    for name, cmd in commands:
        assert re.search(r"""--host["',\s]+["']?127\.0\.0\.1\b""", cmd), (name, cmd)
        assert "0.0.0.0" not in cmd, (name, cmd)


# -- the key -------------------------------------------------------------------------------------

def test_the_hmac_key_comes_from_the_environment_and_is_not_logged(spark, settings, monkeypatch, caplog):
    monkeypatch.setenv(settings.refine.hmac_key_env, KEY)
    with caplog.at_level(logging.DEBUG):
        assert refine.hmac_key(spark, settings) == KEY.encode()
    assert KEY not in caplog.text
    # without it, on data that is not generated (no truth in this lake): refused, naming the fix
    monkeypatch.delenv(settings.refine.hmac_key_env)
    strict = settings.model_copy(update={"refine": settings.refine.model_copy(update={"allow_development_key": False})})
    with pytest.raises(ConfigError, match=r"IPSYNERGY_HMAC_KEY is not set: refusing to hash identifiers of real data"):
        refine.hmac_key(spark, strict)
    # account exports that carry the generator's stamp count as generated data, in any lake
    raw = Path(strict.lake_root).parent / "raw"
    write_accounts(raw)
    ingest.execute(spark, strict, Summary("ingest"), input_root=str(raw))
    with pytest.raises(ConfigError, match="refusing to hash"):
        refine.hmac_key(spark, strict)
    (raw / generate.STAMP).write_text("{}")
    assert refine.hmac_key(spark, strict) == refine.DEV_KEY
    # allowed (generated data, or the flag): the public development key, with a loud warning
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert refine.hmac_key(spark, settings) == refine.DEV_KEY
    assert "PUBLIC development key" in caplog.text and refine.DEV_KEY.decode() not in caplog.text


@pytest.mark.slow
def test_no_raw_pii_or_key_in_the_job_logs_or_silver(spark, tmp_path, monkeypatch, caplog):
    # GIVEN exports with accounts, some account records rejected (they hold raw PII too)
    raw = tmp_path / "raw"
    write_events(raw, 10, seed=31)
    ids_written = write_accounts(raw)
    write_records(raw / "zhixue" / "accounts" / "broken.jsonl", "zhixue",
                  ['{"mobile": "13900017778", "mail": "reader.1@mail-example.com"}', '{"uid": "zx-b", "mobile": "1390'])
    lake_root = tmp_path / "lake"
    settings = make_settings(lake_root, f"lake.raw={raw}")
    # WHEN ingest runs (in this process, every log record kept) and refine runs as a job in a
    # child process (its whole output kept), with the key in the environment
    monkeypatch.setenv(settings.refine.hmac_key_env, KEY)
    with caplog.at_level(logging.DEBUG):
        ingest.execute(spark, settings, Summary("ingest"))
    ingest_log = caplog.text
    out = subprocess.run(job_command("refine", lake_root, f"lake.raw={raw}"), cwd=PROJECT_ROOT,
                         env=child_env({settings.refine.hmac_key_env: KEY}), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ids = raw_identifiers(spark, settings)
    assert {k: len(v) for k, v in ids.items()} == {k: len(v) for k, v in ids_written.items()}
    scan = Scanner(ids, KEY)
    # THEN the logs name files and counts, never an identifier or the key
    assert "reconciliation batch" in out.stdout and "ingest: reading" in ingest_log
    assert scan.hits("\n".join([ingest_log, out.stdout, out.stderr])) == []
    # and no silver table holds one (the rejected account records are quarantined without text)
    for table in (t for t in GOLD if t.layer == "silver"):
        if lake.exists(spark, settings, table):
            assert scan.hits(table_text(spark, settings, table)) == [], table.qualified
    assert lake.read(spark, settings, tables.QUARANTINE).where("source_file LIKE '%/accounts/%'").count() == 2


# -- gold and MLflow -------------------------------------------------------------------------------

def _runs(settings) -> list:
    """Every run in the lake's MLflow store."""
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.fixture(scope="module")
def modelled_lake(spark, small_lake, tmp_path_factory):
    """The shared small lake once the integration chain has trained and scored on it; run on
    its own, a copy of it brought through aggregate, personas and train (quick settings)."""
    settings, _ = small_lake
    if lake.exists(spark, settings, tables.USER_REVENUE_SCORES) and len(_runs(settings)) >= 3:
        return settings
    root = tmp_path_factory.mktemp("pii") / "lake"
    shutil.copytree(settings.lake_root, root, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    copy = make_settings(root, *SMALL)
    aggregate.execute(spark, copy, Summary("aggregate"))
    quick = copy.personas.model_copy(update={"k_min": 3, "k_max": 3, "restarts": 1})
    personas.execute(spark, copy.model_copy(update={"personas": quick}), Summary("personas"))
    net = copy.train.net.model_copy(update={"hidden": (8,), "max_epochs": 4, "patience": 2})
    fast = copy.train.model_copy(update={"min_history_days": 7, "windows": 2, "folds": 2, "net": net})
    train.execute(spark, copy.model_copy(update={"train": fast}), Summary("train"), models=("user_revenue",))
    return copy


def test_no_raw_pii_in_gold_or_mlflow(spark, modelled_lake):
    settings = modelled_lake
    scan = Scanner(raw_identifiers(spark, settings))
    assert min(len(v) for v in scan.ids.values()) > 20
    gold = [t for t in GOLD if t.layer == "gold" and lake.exists(spark, settings, t)]
    assert len(gold) >= 10
    for table in gold:
        assert scan.hits(table_text(spark, settings, table)) == [], table.qualified
    # MLflow: every run's params, tags and metric names (and every registered model's), then
    # the artifact files themselves
    runs = _runs(settings)
    assert runs
    client = MlflowClient()
    texts = []
    for run in runs:
        texts += [f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items()] + list(run.data.metrics)
    for model in client.search_registered_models():
        texts += [model.name, model.description or ""]
        for v in client.search_model_versions(f"name = '{model.name}'"):
            texts += [f"{k}={x}" for k, x in v.tags.items()] + [v.description or ""]
    assert scan.hits("\n".join(texts)) == []
    artifacts = Path(settings.artifact_root.removeprefix("file://"))
    assert any(artifacts.rglob("*.png")) and any(artifacts.rglob("MLmodel"))
    assert scan.hits(files_text(artifacts)) == []
