"""edgekeys: API keys for AI inference deployments, event-sourced, served over gRPC."""
