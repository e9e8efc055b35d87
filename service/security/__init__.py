"""Who may do what, and what is sealed: callers and their roles, limits on failures,
AES-GCM sealing and the personal-data keys."""
