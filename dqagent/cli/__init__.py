"""The command line: argument parsing and wiring, `dqagent status`, text safe for a terminal.
"""
