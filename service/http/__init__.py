"""HTTP/JSON for everyone who is not a gRPC client: REST transcoded from the protos,
Gcore's v3 API-key routes, and the pages of the console, on one listener in the same
event loop as gRPC, calling the same wrapped methods."""
