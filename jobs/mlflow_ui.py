"""Open the MLflow UI on the runs of the configured lake (what `make mlflow-ui` runs)."""
from __future__ import annotations

import os
import sys

from core.errors import ConfigError
from core.settings import load_settings
from core.tracking import ui_command
from jobs.cli import job_parser, overrides_of


def main(argv: list[str] | None = None) -> int:
    """`make mlflow-ui`: the MLflow UI on the store the jobs use, read from the same settings
    (lake.root, mlflow.tracking_uri, --env, --set)."""
    parser = job_parser("python -m jobs.mlflow_ui", main.__doc__ or "")
    parser.add_argument("--port", type=int, default=5000, help="port of the UI on 127.0.0.1 (default 5000)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.env, overrides_of(args), args.as_of)
    except ConfigError as err:
        print(f"python -m jobs.mlflow_ui: {err}", file=sys.stderr)
        return 2
    command = ui_command(settings, args.port)
    if command is None:
        print(f"the runs are on the tracking server {settings.tracking_uri}: open it in a browser")
        return 0
    print(f"MLflow UI for {settings.tracking_uri} at http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
