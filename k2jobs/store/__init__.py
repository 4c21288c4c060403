"""Redis: every key k2jobs keeps and every write to it, each safe to repeat. Imports plan."""
