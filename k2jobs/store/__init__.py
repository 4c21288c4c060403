"""Redis: every key k2jobs keeps (keys.py) and every write to it, each safe to repeat, split by what it records:
jobs, chunk attempts and leases, results and progress, what was loaded; the Ledger joins them. Imports plan."""
