"""Celery configuration for k2jobs; every value comes from the environment via k2jobs.config."""

from kombu import Queue

from k2jobs.config import process_settings, redis_tls

_settings = process_settings()

broker_url = _settings.redis_url
result_backend = _settings.redis_url
broker_connection_timeout = 5
broker_connection_retry_on_startup = True
redis_socket_connect_timeout = 5
redis_backend_health_check_interval = 30

# JSON only: a worker never unpickles anything it is sent.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# A chunk is acknowledged only after it finished; a killed worker's chunk goes back to the queue.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
broker_transport_options = {
    # Unacknowledged chunks come back after this long; it must exceed the longest chunk.
    "visibility_timeout": _settings.visibility_timeout_s,
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
}
result_backend_transport_options = {"visibility_timeout": _settings.visibility_timeout_s}
result_expires = 7 * 24 * 3600

# Chunks and the reconcile callback travel on separate queues, so a callback never waits
# behind thousands of chunks; workers consume both.
task_queues = (Queue("k2jobs.chunks"), Queue("k2jobs.control"))
task_default_queue = "k2jobs.control"
task_routes = {
    "k2jobs.process_chunk": {"queue": "k2jobs.chunks"},
    "k2jobs.reconcile_job": {"queue": "k2jobs.control"},
    "k2jobs.scan_directory": {"queue": "k2jobs.control"},
}

# `stack up --watch DIR` (or a beat service): Celery beat sends one scan of K2_WATCH_DIR (under the data root)
# every K2_WATCH_EVERY_S seconds; a scan not picked up within a period expires, so none pile up.
if _settings.watch_dir:
    beat_schedule = {
        "k2jobs-watch": {
            "task": "k2jobs.scan_directory",
            "schedule": _settings.watch_every_s,
            "args": (_settings.watch_dir,),
            "options": {"queue": "k2jobs.control", "expires": _settings.watch_every_s},
        }
    }

# Events for Flower.
worker_send_task_events = True
task_send_sent_event = True
task_track_started = True
worker_hijack_root_logger = False

# A chunk attempt is stopped (soft) or killed (hard) before Kafka would abort its transaction under it
# (transaction.timeout.ms). Nothing depends on the visibility timeout: a copy of a chunk that Redis hands
# out again while an attempt runs it yields to that attempt.
task_soft_time_limit, task_time_limit = _settings.chunk_time_limits_s
k2_chunk_retries = _settings.chunk_retries
k2_chunk_retry_s = _settings.chunk_retry_s

# rediss:// (a secure stack's K2_REDIS_URL): TLS for the broker and the results. Flower and kombu read these
# settings, not the URL's ssl_* parameters.
_tls = redis_tls(_settings.redis_url)
if _tls is not None:
    broker_use_ssl = _tls
    redis_backend_use_ssl = _tls
