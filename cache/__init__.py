"""The store the gateway writes and the scorer reads: keys, run records, the response index."""
