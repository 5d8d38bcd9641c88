"""Find or train the embedded demo model in a child process, for `oss-serve up`.

The launcher imports no torch (its memory stays the router's); checking the demo cache and,
on first run, training the model import torch, so they run here, in a process that exits
when the checkpoint is ready. Its progress bar goes to the same terminal. A signal to the
launcher is passed on, so an interrupted first run leaves no training behind.

    python -m oss_serve.cluster.launch.demo_model_process CACHE_DIR RESULT_FILE
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from oss_serve.common.logging import configure_logging

INTERRUPTED_EXIT_CODE = 130
PROGRESS_LOGGER = "oss_serve.workers.training.progress"


class DemoModelError(RuntimeError):
    """The demo model could not be found or trained (the child's exit code says why)."""


def ensure_demo_model_in_child(cache_dir: Path, result_file: Path) -> Path:
    """The demo checkpoint folder, trained first if it is not cached."""
    result_file.unlink(missing_ok=True)
    child = subprocess.Popen(
        [sys.executable, "-P", "-m", __name__, str(cache_dir), str(result_file)],
        stdin=subprocess.DEVNULL,
    )

    def pass_on(signum: int, frame: FrameType | None) -> None:
        child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, pass_on) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if code != 0 or not result_file.is_file():
        if code in (INTERRUPTED_EXIT_CODE, -signal.SIGTERM, -signal.SIGINT):
            raise DemoModelError("interrupted while preparing the demo model")
        raise DemoModelError(f"preparing the demo model failed (exit code {code}; see above)")
    folder = Path(result_file.read_text().strip())
    result_file.unlink(missing_ok=True)
    return folder


def main(argv: list[str]) -> int:
    cache_dir, result_file = Path(argv[0]), Path(argv[1])
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwind: the lock is released
    try:
        from oss_serve.workers.training.demo_model import ensure_demo_model

        if not sys.stderr.isatty():  # no bar: a progress line every tenth of the training
            configure_logging("warning")
            logging.getLogger(PROGRESS_LOGGER).setLevel(logging.INFO)
        folder = ensure_demo_model(cache_dir)
    except KeyboardInterrupt:
        return INTERRUPTED_EXIT_CODE
    result_file.write_text(str(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
