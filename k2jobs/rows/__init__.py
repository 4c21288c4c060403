"""One CSV row into a JSON or Avro message value, and a chunk's bytes into batches (the compiled fast path).

Pure; imports plan.
"""
