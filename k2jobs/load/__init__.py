"""Loading one task's chunks: read, parse, publish in one Kafka transaction, record.

Imports kafka, store, sources, rows, plan.
"""
