"""The local stack, which no worker runs: Redis, Kafka, the registry, S3, workers and Flower, and their secrets.

Imports anything below it; only the CLI imports it.
"""
