"""dqagent: keeps the right number of Dramatiq workers running as systemd units."""

__version__ = "0.1.0"
