"""The checklist under the guest's real systemd: install the .deb with apt, READY and STATUS,
both sensor kinds under the hardening, reload (valid, invalid), journal priorities, watchdog
restart of a stopped daemon, stop within TimeoutStopSec, systemd-analyze security, purge."""
import json
import os
import re
import subprocess
import time

from vm import Bridge, Guest, Subscriber, log, wait_for, IMAGES

CONFIG = """[mqtt]
host = "127.0.0.1"
port = 1883
client_id = "systest-checklist"
keep_alive = "10s"

[buffer]
path = "/var/lib/telemetryd/buffer"

[[sensor]]
name = "load"
kind = "file"
path = "/proc/loadavg"
interval = "500ms"
topic = "systest/ck/file"
format = "json"

[[sensor]]
name = "mem"
kind = "command"
command = ["awk", "/^MemAvailable:/ {{ print $2 }}", "/proc/meminfo"]
interval = "500ms"
topic = "systest/ck/command"
format = "json"
{extra}"""
ADDED = """
[[sensor]]
name = "uptime"
kind = "file"
path = "/proc/uptime"
interval = "500ms"
topic = "systest/ck/added"
format = "json"
"""
INVALID = CONFIG.format(extra="").replace('interval = "500ms"', 'interval = "soon"', 1)


class Checklist:
    def __init__(self):
        self.failures = 0

    def check(self, what, ok, detail=""):
        print(f"  {'ok  ' if ok else 'FAIL'}  {what}{': ' + detail if detail else ''}", flush=True)
        if not ok:
            self.failures += 1
        return ok


def run(work, deb, broker, accel, smp):
    c = Checklist()
    vm_dir = os.path.join(work, "checklist")
    os.makedirs(vm_dir)
    disk = os.path.join(vm_dir, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                    os.path.join(IMAGES, "base.img"), disk], check=True)
    from vm import make_payload
    payload = make_payload(vm_dir, {
        os.path.basename(deb): deb,
        "valid.toml": CONFIG.format(extra="").encode(),
        "added.toml": CONFIG.format(extra=ADDED).encode(),
        "invalid.toml": INVALID.encode(),
    })
    sub = Subscriber(vm_dir, broker.port, "systest/ck/#")
    bridge = Bridge(broker.port)
    vm = Guest(vm_dir, disk, accel=accel, payload=payload, smp=smp)
    bridge.attach(vm.mqtt_path, True)
    try:
        boot = vm.connect()
        log(f"checklist: guest up after {boot:.0f} s ({accel})")
        _steps(c, vm, sub, deb)
    finally:
        vm.kill()
        bridge.quit = True
        sub.stop()
    return c.failures


def _show(vm, *props):
    _, out = vm.run("systemctl show telemetryd.service -p " + ",".join(props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _count(sub, topic, since=0.0):
    return sum(1 for t, top, _ in sub.messages() if top == topic and t >= since)


def _journal_warnings(vm, since):
    _, out = vm.run(f"journalctl -u telemetryd.service -p warning -o cat --since @{since:.3f} --no-pager -q")
    return [line for line in out.splitlines() if line.strip()]


def _explain(vm, since, what):
    """What a failed check leaves for whoever reads the CI log: the daemon's and the bridge's
    journal since the step began, and the guest's TCP connections."""
    print(f"        {what}; the guest's journal since then:", flush=True)
    _, out = vm.run(f"journalctl -u telemetryd.service -u systest-bridge.service --since @{since:.3f} "
                    "-o short-monotonic --no-pager -q | tail -n 40")
    _, ss = vm.run("(ss -tnp || cat /proc/net/tcp) 2>&1 | head -n 20")
    for line in (out + "\n" + ss).splitlines():
        print(f"        | {line}", flush=True)


def _steps(c, vm, sub, deb):
    _, gnow = vm.run("date +%s.%N")
    vm.run("mkdir -p /mnt/payload && mount -o ro /dev/vdb /mnt/payload")
    rc, out = vm.run(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q /mnt/payload/{os.path.basename(deb)}", 900)
    if not c.check("apt-get install ./telemetryd.deb (no network: dependencies from the image)", rc == 0, out[-400:] if rc else ""):
        return
    _, enabled = vm.run("systemctl is-enabled telemetryd.service")
    c.check("the unit is enabled, not started", enabled == "enabled" and _show(vm, "ActiveState")["ActiveState"] == "inactive", enabled)
    vm.run("install -m 644 /mnt/payload/valid.toml /etc/telemetryd/telemetryd.toml")

    t_start = float(vm.run("date +%s.%N")[1])
    rc, out = vm.run("systemctl start telemetryd.service", 120)
    s = _show(vm, "ActiveState", "SubState", "StatusText", "MainPID", "NRestarts")
    c.check("systemctl start returns (Type=notify: after READY=1), active (running)",
            rc == 0 and (s["ActiveState"], s["SubState"]) == ("active", "running"), f"{out} {s}")
    try:
        status = wait_for("STATUS= saying connected", lambda: (st := _show(vm, "StatusText")["StatusText"]) and
                          "connected" in st and "not connected" not in st and st, 60)
        c.check("STATUS= (systemctl status)", True, status)
    except TimeoutError as e:
        c.check("STATUS= says connected", False, f"{e}: {_show(vm, 'StatusText')}")
    pid = s["MainPID"]
    for topic, kind in (("systest/ck/file", "file"), ("systest/ck/command", "command")):
        try:
            wait_for(topic, lambda: _count(sub, topic) >= 3, 60)
            ok = True
        except TimeoutError:
            ok = False
        got = [p for _, top, p in sub.messages() if top == topic]
        c.check(f"a {kind} sensor works under the unit's hardening: {topic} at the host broker",
                ok and all("value" in json.loads(p) for p in got[:3]), (got[:1] or ["nothing"])[0])
    warnings = _journal_warnings(vm, t_start)
    _, info = vm.run(f"journalctl -u telemetryd.service -o cat --since @{t_start:.3f} --no-pager -q")
    c.check("journalctl -p warning: nothing while healthy (the full log has its info lines)",
            not warnings and "connected" in info, f"{warnings[:3]}; full log: {len(info.splitlines())} lines")

    # Reload: valid.
    vm.run("install -m 644 /mnt/payload/added.toml /etc/telemetryd/telemetryd.toml")
    t = time.time()
    rc, out = vm.run("systemctl reload telemetryd.service")
    ok_added = True
    try:
        wait_for("added sensor", lambda: _count(sub, "systest/ck/added") >= 2, 60)
    except TimeoutError:
        ok_added = False
    c.check("reload with a valid config: a new sensor publishes, same process",
            rc == 0 and ok_added and _show(vm, "MainPID")["MainPID"] == pid, out)
    # Reload: invalid, through systemctl (ExecReload's check fails it) and SIGHUP (the daemon keeps the old one).
    t_bad = float(vm.run("date +%s.%N")[1])
    vm.run("install -m 644 /mnt/payload/invalid.toml /etc/telemetryd/telemetryd.toml")
    rc, out = vm.run("systemctl reload telemetryd.service")
    c.check("reload with an invalid config: systemctl reload fails, the daemon runs on",
            rc != 0 and _show(vm, "ActiveState")["ActiveState"] == "active" and _show(vm, "MainPID")["MainPID"] == pid,
            f"status {rc}")
    vm.run(f"kill -HUP {pid}")
    t = time.time()
    try:
        wait_for("the daemon's error", lambda: "still running the previous config" in "\n".join(_journal_warnings(vm, t_bad)), 30)
        flowing = wait_for("readings after the bad SIGHUP", lambda: _count(sub, "systest/ck/added", t) >= 2, 30)
    except TimeoutError:
        flowing = False
    warnings = _journal_warnings(vm, t_bad)
    c.check("SIGHUP with an invalid config: error logged (names the key), old config kept, readings flow",
            bool(flowing) and _show(vm, "MainPID")["MainPID"] == pid, " | ".join(warnings)[:300])
    text = "\n".join(warnings)
    c.check("journalctl -p warning shows the invalid config's problem: its line and key",
            "telemetryd.toml:14:12: interval:" in text and 'interval = "soon"' in text, f"{len(warnings)} lines")
    vm.run("install -m 644 /mnt/payload/added.toml /etc/telemetryd/telemetryd.toml")
    t_ok = float(vm.run("date +%s.%N")[1])
    rc, _ = vm.run("systemctl reload telemetryd.service")
    time.sleep(3)  # a quiet period, so anything logged in it would show below
    warnings = _journal_warnings(vm, t_ok)
    c.check("after the config is fixed, reload works and -p warning stays empty", rc == 0 and not warnings, str(warnings[:3]))

    # The watchdog: a stopped (SIGSTOP) daemon is killed and restarted.
    t_wd = float(vm.run("date +%s.%N")[1])
    n0 = int(_show(vm, "NRestarts")["NRestarts"])
    vm.run(f"kill -STOP {pid}")
    t = time.time()
    try:
        wait_for("restart", lambda: (s := _show(vm, "NRestarts", "MainPID", "ActiveState"))["ActiveState"] == "active"
                 and int(s["NRestarts"]) > n0 and s["MainPID"] not in ("0", pid), 150, 1)
        restarted = True
    except TimeoutError:
        restarted = False
    took = time.time() - t
    _, wdlog = vm.run(f"journalctl -u telemetryd.service --since @{t_wd:.3f} -o cat --no-pager -q | grep -i watchdog")
    t2 = time.time()
    try:
        wait_for("readings after the restart", lambda: _count(sub, "systest/ck/file", t2) >= 2, 90)
        resumed = True
    except TimeoutError:
        resumed = False
    ok = c.check(f"watchdog: a SIGSTOPped daemon is restarted ({took:.0f} s) and publishes again",
                 restarted and resumed and "atchdog" in wdlog, wdlog.splitlines()[0] if wdlog else "no watchdog line")
    if not ok:
        _explain(vm, t_wd, f"restarted {restarted}, readings after it {resumed}")
    pid = _show(vm, "MainPID")["MainPID"]

    # Stop within TimeoutStopSec (15 s), cleanly.
    t = time.time()
    rc, out = vm.run("systemctl stop telemetryd.service", 60)
    took = time.time() - t
    s = _show(vm, "Result", "ExecMainCode", "ExecMainStatus", "ActiveState")
    c.check(f"systemctl stop: {took:.1f} s (TimeoutStopSec=15s), result {s['Result']}, status {s['ExecMainStatus']}",
            rc == 0 and took < 15 and s["Result"] == "success" and s["ActiveState"] == "inactive", str(s))

    rc, out = vm.run("systemd-analyze security telemetryd.service --no-pager")
    m = re.search(r"Overall exposure level for telemetryd.service: ([0-9.]+)", out)
    c.check("systemd-analyze security (live, systemd 252): at most 2.0", bool(m) and float(m.group(1)) <= 2.0,
            m.group(0) if m else out[-200:])

    rc, out = vm.run("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q telemetryd", 300)
    c.check("apt-get purge telemetryd", rc == 0, out[-300:] if rc else "")
    _, left = vm.run("ls -d /etc/telemetryd /var/lib/telemetryd /usr/bin/telemetryd "
                     "/lib/systemd/system/telemetryd.service /etc/systemd/system/*/telemetryd.service 2>/dev/null; "
                     "getent passwd telemetryd; getent group telemetryd; "
                     "systemctl show -p LoadState telemetryd.service")
    c.check("purge removed everything (files, state, user, group, unit)", left.strip() == "LoadState=not-found", left)
