"""k2jobs: bulk-load exchange tick-data CSV files into Apache Kafka through Celery."""

__version__ = "0.1.0"
