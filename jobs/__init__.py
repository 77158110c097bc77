"""The workload: job kinds for the Fashion-MNIST assignment, registered by name.

Kinds are found through the `sweeper.kinds` entry points in pyproject.toml. Keep this package's
import light: `sweeper enqueue` imports `jobs.kinds.params` (pydantic only) to validate grid files.
"""
