"""MLflow I/O: where runs go (SQLite beside the lake by default, or a tracking server)."""
from __future__ import annotations

import sys
from pathlib import Path

import mlflow

from core.settings import Settings

# MLflow 3's UI opens an experiment of unknown kind in its GenAI view (traces, judges,
# prompts); these are model-training experiments, so it should open on the runs table.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
DESCRIPTIONS = {
    "revenue": "Revenue models, one run per model and as-of date: compare test_gini and test_total_error_pct "
               "with each baseline_<naive|linear|hgb|btyd>_test_* of the same run; the gate tag says which "
               "candidate won and why.",
    "personas": "Persona K-means, one run per as-of date: the k sweep, stability and the fitted pipeline.",
}


def experiment(settings: Settings, name: str) -> str:
    """Point MLflow at the configured store and select ``<prefix>-<name>`` (created with the
    configured artifact root if new, as a model-training experiment with a description; an
    older experiment gains both). Returns the experiment id."""
    mlflow.set_tracking_uri(settings.tracking_uri)
    full = f"{settings.mlflow.experiment_prefix}-{name}"
    found = mlflow.get_experiment_by_name(full)
    root = settings.artifact_root  # None: the tracking server keeps the artifacts
    location = None if root is None else f"{root}/{full}" if "://" in root else Path(root, full).as_uri()
    tags = dict([EXPERIMENT_KIND, *([("mlflow.note.content", DESCRIPTIONS[name])] if name in DESCRIPTIONS else [])])
    if found is None:
        exp_id = mlflow.create_experiment(full, artifact_location=location, tags=tags)
    else:
        exp_id = found.experiment_id
        for key, value in tags.items():
            if found.tags.get(key) != value:
                mlflow.MlflowClient().set_experiment_tag(exp_id, key, value)
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
