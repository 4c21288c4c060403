"""Where input comes from: a Source (a local directory, an S3 prefix) and one planning loop for all, gzip, the input
layout and company map, cutting files into chunks.

Imports plan and rows.
"""
