"""A job's life: submit, enqueue, supervise, reconcile, watch, verify, diagnose a stall.

Imports the Celery app and everything below it.
"""
