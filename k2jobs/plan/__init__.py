"""The plan: a job's files and chunks, how chunks group into tasks, extents and checksums.

Pure; imports only config and errors.
"""
