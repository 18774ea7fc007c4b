"""The real-systemd test bed, shared by the integration tests and the dev/ scripts (demo, replay, unit speed).

`nspawn`: a throwaway systemd 252 in systemd-nspawn; `redis`: a private redis-server; `agent`: dqagent
installed in that container as an operator installs it, and what it did there; `wait`: waiting for an
observable condition; `app/`: the sample Dramatiq app real workers run. Not part of the dqagent
package (never in its wheel): tests and dev scripts import it from the checkout.
"""
