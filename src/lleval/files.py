"""What every output file lleval writes shares: the mode it gets, the removal of a
temporary file whose write failed, and whether the run that named a temporary file is
still alive (names carry the writer's pid, so a leftover of a SIGKILLed run is known)."""

from __future__ import annotations

import os
from pathlib import Path


def file_mode() -> int:
    """The mode a file created with ``open()`` gets here (``0o666`` less the umask): files
    made through ``mkstemp`` are 0600, which a CI artifact step or a teammate may not read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read the umask by setting it, then put it back
    os.umask(mask)
    return 0o666 & ~mask


def remove_quietly(path: Path) -> None:
    """Remove a temporary file whose write failed or was not needed; it may be gone already."""
    try:
        path.unlink()
    except OSError:
        pass


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine: a temporary file or folder named by a
    pid that is not alive belongs to a run that died and will never finish it. Another
    user's process counts as alive (its files are not ours to remove)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
