"""The batch lane: OpenAI's ``/v1/files`` + ``/v1/batches``, sending upstream only what the cache lacks.

``files`` keeps uploaded and produced JSONL files, ``journal`` each batch job
(durable, so a restarted gateway resumes it), ``upstream`` talks to a
provider's own batch API, ``local`` runs misses through the pipeline for
servers without one, ``lane`` ties them together and ``routes`` serves them.
"""
