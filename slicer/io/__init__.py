"""Files: the safetensors format, a local teacher checkpoint and its reader, and the student's writer.

``format`` parses and builds headers; ``checkpoint`` finds a checkpoint's files and tensors
(headers only); ``reader`` reads spans of teacher tensors; ``sink`` appends bytes to a new
file; ``writer`` streams the shards and finishes OUT atomically.
"""
