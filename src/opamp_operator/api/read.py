"""What clients of the operator's read API (/api/v1/fleets/...) rely on: the agent states
its agent listing filters on (`?state=`), which `kubectl opamp agents --state` offers.
Kept here, beside the CRD models, so the plugin names them without importing the server."""

AGENT_STATES = (
    "healthy",
    "unhealthy",
    "failed",
    "applying",
    "pending",
    "drifted",
    "outdated",
    "disconnected",
    "unmapped",
)
