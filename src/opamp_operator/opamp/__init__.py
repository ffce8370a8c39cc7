"""The OpAMP protocol, sans-I/O: wire format, framing and per-agent session state.

Nothing here touches sockets, asyncio or Kubernetes; transports feed bytes in and send
the bytes that come out (see docs/architecture.md).
"""
