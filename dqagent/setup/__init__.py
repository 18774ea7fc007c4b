"""Host setup: install and uninstall, the preflight and `dqagent check`, the rendered units and their
sandbox.
"""
