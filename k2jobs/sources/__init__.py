"""Where input comes from: a local directory or S3, gzip, the input layout and company map, cutting files into chunks.

Imports plan and rows.
"""
