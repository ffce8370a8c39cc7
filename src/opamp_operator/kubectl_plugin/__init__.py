"""`kubectl opamp`: fleets, agents and rollouts from the command line.

`format` holds the pure rendering (tables, ages, status summaries, patches); `cli` the
argument parsing and the thin I/O against the Kubernetes API and the operator's read API.
"""
