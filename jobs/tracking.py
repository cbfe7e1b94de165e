"""MLflow I/O: where runs go (SQLite beside the lake by default, or a tracking server)."""
from __future__ import annotations

from pathlib import Path

import mlflow

from jobs.config import Settings


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
