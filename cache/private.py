"""Everything the store creates is private to its user: folders ``0700``, files ``0600``.

Prompts, answers and launch logs are as sensitive as the data set behind
them, and some files are created by libraries that take no mode (diskcache's
SQLite database, its WAL and its value files; a launched upstream's log), so
the mode is set once for the whole process, through its umask, before any of
them is created.
"""

from __future__ import annotations

import os

PRIVATE_UMASK = 0o077  # no group or other bits on anything created from now on


def keep_private() -> None:
    """Clear group and other bits of every file and folder this process creates from now on.

    Idempotent, and it only adds restrictions to the umask a user set.
    """
    previous = os.umask(PRIVATE_UMASK)
    os.umask(previous | PRIVATE_UMASK)
