"""Pure decisions and records (no I/O): the decision step, policies, reconciler, guard, fleet split,
snapshot.
"""
