# The k2jobs image: Celery worker (default), Flower and the `python -m k2jobs` command line.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml README.md celeryconfig.py ./
COPY k2jobs/ ./k2jobs/
RUN pip install .

# Workers only read their input, which is mounted read-only at /data (K2_DATA_ROOT).
RUN useradd --create-home --uid 10001 --user-group k2
USER k2

CMD ["celery", "-A", "k2jobs.app", "worker", "-Q", "k2jobs.chunks,k2jobs.control", "-c", "2", "-E", "--loglevel", "INFO"]
