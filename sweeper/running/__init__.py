"""Running jobs: the work loop, how many workers, experiment tracking, progress lines."""
