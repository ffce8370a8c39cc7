"""Fleets from a file and `opamp-operator serve`, for running without Kubernetes."""
