"""What the agent tells operators: sd_notify, journald and log files, STATUS=, the journal catalog,
Prometheus metrics.
"""
