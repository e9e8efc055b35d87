"""Running it: configuration, the one server assembly for every mode, TLS and the
callers gate, logs, metrics, and the `edgekeys` command."""
