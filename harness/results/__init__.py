"""What runs leave: run records (DVC's truth) and MLflow tracking."""
