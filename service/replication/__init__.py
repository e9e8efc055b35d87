"""Following a store from elsewhere: PostgreSQL LISTEN, edge followers fed by
StreamIndex, their freshness."""
