"""The domain: the ApiKey aggregate and its events, its rules (errors), resource names,
the secret format and the clock. Imports nothing else from the project."""
