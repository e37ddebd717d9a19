"""``qnet testnet``: a whole QNet network of real processes on one machine (like chutney)."""
