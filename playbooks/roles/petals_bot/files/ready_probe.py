"""Prints what the play's wait needs to know of the bot: ready, failed or waiting.

ready: /healthz answers 200 (logged in to Discord, holding its guilds). failed: the unit gave up
(an exit that a restart cannot fix, e.g. a refused token: the unit's RestartPreventExitStatus).
waiting: anything else (starting, restarting, not answering yet).
Run by the petals_bot role with the venv's Python: argv = health URL, unit name.
"""

import subprocess
import sys
import urllib.error
import urllib.request

url, unit = sys.argv[1], sys.argv[2]
show = ["systemctl", "show", "--property=ActiveState", "--value", unit]
if subprocess.run(show, capture_output=True, text=True).stdout.strip() == "failed":
    print("failed")
    sys.exit(0)
try:
    with urllib.request.urlopen(url, timeout=3) as answer:
        print("ready" if answer.status == 200 else "waiting")
except (OSError, urllib.error.URLError):
    print("waiting")
