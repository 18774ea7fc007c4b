"""The only speaker to systemd (D-Bus, dbus-fast): connection, followed unit states, jobs, listings,
the agent's job table.
"""
