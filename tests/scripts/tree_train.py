"""A training that builds the hardest tree to kill, recording every pid under $MLSM_DIR/pids.

A child with a grandchild, a grandchild in its own session (setsid), a child that ignores
SIGTERM, and an orphan whose parent exited at once; then it beats forever.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

from mlsm import hooks

PIDS = Path(os.environ.get("TEST_SHARED") or os.environ["MLSM_DIR"]) / "pids"
PIDS.mkdir(exist_ok=True)
RECORD = "import os, sys; open(sys.argv[1], 'w').write(str(os.getpid()))\n"
SLEEP = RECORD + "import signal\nwhile True: signal.pause()\n"
IGNORE = RECORD + "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + SLEEP
PARENT = (RECORD + "import subprocess\nsubprocess.Popen([sys.executable, '-c', {code!r}, "
          "sys.argv[2]])\n")


def spawn(name: str, code: str, *extra: str, **kw: bool) -> None:
    subprocess.Popen([sys.executable, "-c", code, str(PIDS / name), *map(str, extra)], **kw)


spawn("child", PARENT.format(code=SLEEP) + "import signal\nsignal.pause()\n",
      PIDS / "grandchild")
spawn("setsid_grandchild", PARENT.format(code=SLEEP).replace("])", "], start_new_session=True)"),
      PIDS / "setsid")
spawn("ignores_term", IGNORE)
spawn("orphan_parent", PARENT.format(code=SLEEP), PIDS / "orphan")
(PIDS / "main").write_text(str(os.getpid()))
while True:
    hooks.heartbeat(0)
    time.sleep(0.05)
