"""Models: personas (Spark MLlib K-means) and revenue regressors (torch, tracked in MLflow)."""
