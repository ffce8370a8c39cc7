"""Fleet logic as pure functions over plain data: agent↔pod mapping, health aggregation,
drift, Collector config validation and (later) the rollout planner. No I/O here: the
Kubernetes shell (k8s/) reads the world into these types and writes back what they decide.
"""
