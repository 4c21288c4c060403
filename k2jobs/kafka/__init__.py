"""Kafka: topics, the transactional chunk producer, commit markers, the schema registry, preflight checks.

Imports plan and rows.
"""
