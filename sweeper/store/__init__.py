"""The store: schema and engine, the queue's transitions, settling, checkpoints, the read model."""
