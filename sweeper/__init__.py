"""sweeper: a resumable job-queue sweep orchestrator for PyTorch experiments."""

__version__ = "0.1.0"
