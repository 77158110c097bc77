"""The assignment's report plug-in for `sweeper report`: Steps 1-4, one part per question (`sections.py`)."""
