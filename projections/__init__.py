"""Everything derived from the event store: the validation index and the key catalog."""
