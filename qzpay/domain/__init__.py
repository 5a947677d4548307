"""Domain types: pure attrs records with no I/O, one module per area of billing."""
