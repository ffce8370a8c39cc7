"""Fleet logic as pure functions over plain data: agent↔pod mapping, health aggregation,
drift, remediation, Collector config validation, the rollout planner, kstatus conditions,
status builders and Events. No I/O here: the
Kubernetes shell (k8s/) reads the world into these types and writes back what they decide.
"""
