"""Models: the families table, loading (whole or sharded) and the built-in toy."""
