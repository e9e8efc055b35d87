"""The client side of the `edgekeys` command (`keys`, `audit`): it talks to a server
only through the generated stubs in `edgekeys/`."""
