"""A deterministic simulator of one Dramatiq worker pool, to compare scaling policies on traces.

Not used by the agent at run time: `dqagent simulate` and `dev/bench` drive it.
"""
