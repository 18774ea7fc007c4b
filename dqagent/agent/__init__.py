"""The agent process: its life cycle, the loop of checks, and `systemctl reload`.
"""
