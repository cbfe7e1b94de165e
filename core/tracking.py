"""MLflow I/O: where runs go (SQLite beside the lake by default, or a tracking server)."""
from __future__ import annotations

import sys
from pathlib import Path

import mlflow

from core.settings import Settings


def experiment(settings: Settings, name: str) -> str:
    """Point MLflow at the configured store and select ``<prefix>-<name>`` (created with the
    configured artifact root if new). Returns the experiment id."""
    mlflow.set_tracking_uri(settings.tracking_uri)
    full = f"{settings.mlflow.experiment_prefix}-{name}"
    found = mlflow.get_experiment_by_name(full)
    root = settings.artifact_root  # None: the tracking server keeps the artifacts
    location = None if root is None else f"{root}/{full}" if "://" in root else Path(root, full).as_uri()
    exp_id = found.experiment_id if found else mlflow.create_experiment(full, artifact_location=location)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def model_name(settings: Settings, model: str) -> str:
    """The registered-model name of one of our models: ``<prefix>-<model>``."""
    return f"{settings.mlflow.experiment_prefix}-{model}"


def champion(settings: Settings, model: str):
    """The registered version that has the alias ``champion`` for ``model``, or None."""
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient().get_model_version_by_alias(model_name(settings, model), "champion")
    except mlflow.exceptions.MlflowException:
        return None


def ui_command(settings: Settings, port: int) -> list[str] | None:
    """The `mlflow ui` command line that shows this lake's runs, or None when they live on a
    tracking server (which has a UI of its own)."""
    if settings.tracking_uri.startswith(("http://", "https://")):
        return None
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", settings.tracking_uri, "--host", "127.0.0.1",
            "--port", str(port)]
