"""What every layer stands on, importing nothing of ours: settings, the raw-source and table
contracts, Delta I/O, the Spark session and MLflow tracking."""
