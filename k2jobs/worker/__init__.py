"""The worker side of Celery: thin tasks, signals, per-process clients, the worker command. Imports jobs and below."""
