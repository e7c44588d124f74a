"""Probe scripts for the tests: a subprocess that reports on stdout, one JSON object per line."""
import json
import subprocess
import sys
import threading


def start_probe(processes, *args):
    """Start ``python <args>`` in its own session, killed at teardown. Returns ``(proc, messages)``
    where ``messages()`` is every JSON line printed so far."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)

    class Kill:
        def close(self):
            proc.kill()

    processes.add(Kill())
    lines = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lambda: [json.loads(line) for line in list(lines)]
