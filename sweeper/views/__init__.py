"""What the user reads: `status`, `show`, `report`, `export`, the MLflow screenshot."""
