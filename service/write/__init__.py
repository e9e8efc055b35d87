"""The write side: the KeyStore application (every use case that records events),
request ids, the single writer, last use."""
