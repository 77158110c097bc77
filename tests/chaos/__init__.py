"""The chaos suite: a real sweep run while workers and the database are killed, frozen and restarted.

monkey.py injects the faults (seeded), invariants.py checks what must hold afterwards, pg.py
controls the PostgreSQL server, harness.py wires them into one run. The CI test is
test_chaos.py; `python -m benchmarks.chaos --minutes N` runs the same harness as a soak.
"""
