"""``kubectl spiderpool``: the admin's view of pools, addresses and what went wrong."""
