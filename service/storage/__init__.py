"""Where the data lives: database URLs and engines, the event store's recorders, the
tables kept beside the store."""
