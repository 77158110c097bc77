"""The job kinds (`train`, `prune`, `benchmark`, `noop`), their param models and what they leave behind."""
