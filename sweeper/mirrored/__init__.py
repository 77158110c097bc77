"""A state directory on a network mount (Colab's Drive): mount detection, snapshots, the session lease, recovery."""
