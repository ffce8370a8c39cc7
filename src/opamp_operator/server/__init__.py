"""I/O around the protocol core: the aiohttp transports, read API, health and metrics."""
