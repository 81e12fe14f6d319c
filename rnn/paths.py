"""What a path names, when it is not a regular file: one phrase for every message that reads a
user's file (a corpus, a checkpoint, a spec). Never opens the path: opening a FIFO would block."""

from __future__ import annotations

import errno
import os
import stat
from typing import Optional, Union

__all__ = ["not_a_file"]


def not_a_file(path: Union[str, os.PathLike[str]]) -> Optional[str]:
    """None for a regular file (or a link to one); else what the path is, e.g. ``"no such file"``,
    ``"a symbolic link loop"``, ``"a device, not a file"``, ``"a named pipe (FIFO), not a file"``."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "no such file"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop"
        if e.errno == errno.EACCES:
            return "not readable (permission denied)"
        if e.errno == errno.ENOTDIR:
            return "no such file (a part of the path is not a folder)"
        return f"not readable ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory, not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a file"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO), not a file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a file"
    return "not a regular file"
