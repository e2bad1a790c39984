"""The jobs wing: long work (downloads, training, uploads) as a record, a store and a runner.

Every kind shares :mod:`.kit` (the job table, save-then-emit with declared throttles, one backoff,
one retry rule). Jobs may import ``core`` and ``backends``; neither of them imports ``jobs``.
"""
