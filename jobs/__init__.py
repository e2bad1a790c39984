"""Long-running work: each job kind is a record (in ``core``), a store over the state database and a
runner, built on one small kit. Jobs may import ``core`` and ``backends``; nothing below imports them.
"""
