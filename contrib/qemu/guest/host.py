"""Host side of contrib/qemu/run-guest.sh: run QEMU, inflate the balloon while reads are in flight.

    python3 host.py OUT_DIR TIMEOUT_S -- QEMU ARGS...

Starts QEMU (its serial console on our pipe, its stderr in OUT_DIR/qemu.stderr,
QMP on OUT_DIR/qmp.sock), echoes the guest's console as "guest: ...", and when
the guest says "XMC: reading" asks QMP for a balloon of half the guest's RAM,
then polls query-balloon until the balloon is inflated.  Writes
OUT_DIR/host.json (what happened) and exits 0 when QEMU exited 0 after the
guest said "XMC: guest done ok" and the balloon took guest memory while the
reads were in flight (the guest's MemTotal after its reads is below the one
before them); 1 otherwise (a hang is killed at TIMEOUT_S).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time


class QMP:
    """A minimal QMP client: one command at a time, events skipped."""

    def __init__(self, path: str, deadline: float) -> None:
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.f = self.sock.makefile("rw")
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self) -> dict:
        while True:
            msg = json.loads(self.f.readline())
            if "event" not in msg:
                return msg

    def cmd(self, name: str, **args: object) -> dict:
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"QMP {name}: {reply['error']}")
        return reply["return"]


def main() -> int:
    out, timeout = sys.argv[1], float(sys.argv[2])
    qemu = sys.argv[sys.argv.index("--") + 1:]
    ram = int(os.environ.get("GUEST_RAM", str(512 << 20)))
    sock = os.path.join(out, "qmp.sock")
    deadline = time.monotonic() + timeout
    with open(os.path.join(out, "qemu.stderr"), "wb") as err:
        proc = subprocess.Popen([*qemu, "-qmp", f"unix:{sock},server=on,wait=off"],
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    t0 = time.monotonic()
    memtotal: list[int] = []  # kB: at the start, after the reads
    events: dict[str, object] = {"console": []}
    reading = threading.Event()
    done = threading.Event()

    def console() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            print(f"guest: {line}", flush=True)
            if line.startswith("XMC:"):
                events["console"].append(f"{time.monotonic() - t0:7.2f} s {line}")  # type: ignore[union-attr]
                if "MemTotal:" in line:
                    memtotal.append(int(line.split("MemTotal:")[1].split()[0]))
            if line == "XMC: reading":
                reading.set()
            if line == "XMC: guest done ok":
                done.set()

    t = threading.Thread(target=console, daemon=True)
    t.start()
    qmp = QMP(sock, deadline)
    target = ram // 2
    while not reading.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            break
    if reading.is_set():
        sent = time.monotonic()
        qmp.cmd("balloon", value=target)
        events["balloon_target"] = target
        while time.monotonic() < deadline and proc.poll() is None and not done.is_set():
            actual = qmp.cmd("query-balloon")["actual"]
            if actual <= target:
                events["balloon_inflated_after_s"] = round(time.monotonic() - sent, 2)
                break
            time.sleep(0.1)
        events["balloon_sent_at_s"] = round(sent - t0, 2)
        events["balloon_actual_while_reading"] = actual
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        events["hang"] = f"killed after {timeout:.0f} s"
    t.join(5)
    events["qemu_status"] = proc.returncode
    events["guest_done"] = done.is_set()
    events["memtotal_kb_before_and_after_reads"] = memtotal
    taken = len(memtotal) == 2 and memtotal[1] < memtotal[0]
    with open(os.path.join(out, "host.json"), "w") as f:
        json.dump(events, f, indent=1)
    ok = proc.returncode == 0 and done.is_set() and taken
    if not ok:
        print(f"host: FAILED: {json.dumps(events)}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
