"""Loading one task's chunks: read, parse, publish in one Kafka transaction, record.

Imports kafka, sources, rows, plan (the Redis side comes in through the ports in load/ports.py).
"""
