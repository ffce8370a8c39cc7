"""Agent simulator and load generator: many OpAMP agents in one asyncio process.

`protocol` is the pure per-agent logic, `agent` its WebSocket and HTTP transports,
`runner` the fleet (`Simulation`, `run_simulation`), `stats` the counts and the summary,
`command` the `opamp-operator simulate` CLI.
"""

from opamp_operator.simulator.agent import SimulatedAgent
from opamp_operator.simulator.protocol import AgentCore, AgentOptions
from opamp_operator.simulator.runner import Simulation, run_simulation
from opamp_operator.simulator.settings import SimulationSettings
from opamp_operator.simulator.stats import SimulationStats, Summary

__all__ = [
    "AgentCore",
    "AgentOptions",
    "SimulatedAgent",
    "Simulation",
    "SimulationSettings",
    "SimulationStats",
    "Summary",
    "run_simulation",
]
