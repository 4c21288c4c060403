# The k2jobs image: Celery worker (default), Flower and the `python -m k2jobs` command line.

# Build stage: a C compiler for k2jobs' compiled fast path (k2jobs/rows/_fastrows.c), kept out of the image.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md celeryconfig.py ./
COPY k2jobs/ ./k2jobs/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

# MALLOC_ARENA_MAX: librdkafka's threads (new ones per chunk) would otherwise each grow a malloc arena.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels
# The compiled parser is optional at install time; an image without it would be several times slower.
RUN python -c "import k2jobs.rows._fastrows"

# Workers only read their input, which is mounted read-only at /data (K2_DATA_ROOT).
RUN useradd --create-home --uid 10001 --user-group k2
USER k2

CMD ["celery", "-A", "k2jobs.app", "worker", "-Q", "k2jobs.chunks,k2jobs.control", "-c", "2", "-E", "--loglevel", "INFO"]
