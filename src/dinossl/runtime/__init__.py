"""Runtime plumbing shared by training and evaluation: the device a process computes on, its
numeric precision, and the process group (collectives, timeouts, lost peers).

Nothing here knows about DINO; it sits below ``data``, ``models``, ``train`` and ``eval``.
"""
