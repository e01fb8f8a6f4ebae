"""The power-cut campaign: one disk, booted again and again, each boot cut by kill -9 of qemu at
a random moment, with the disk at cache=none, cache=writeback or on lossy-nbd.py (unflushed
writes lost at the cut), the broker reachable or not (then a backlog is in the store when the
power goes). A final boot drains everything; then every reading the host subscriber got is
accounted for (analyse.py)."""
import json
import os
import random
import subprocess
import sys
import time

from vm import Bridge, Guest, Subscriber, log, make_payload, wait_for, HERE, IMAGES

SENSORS = {"fast": 0.020, "load": 0.050, "cmd": 0.100}
CONFIG = """[mqtt]
host = "127.0.0.1"
port = 1883
client_id = "systest-powercut"
keep_alive = "5s"

[buffer]
path = "/var/lib/telemetryd/buffer"
max_messages = 1000000

[[sensor]]
name = "fast"
kind = "file"
path = "/proc/uptime"
interval = "20ms"
topic = "systest/pc/fast"
format = "json"

[[sensor]]
name = "load"
kind = "file"
path = "/proc/loadavg"
interval = "50ms"
topic = "systest/pc/load"
format = "json"

[[sensor]]
name = "cmd"
kind = "command"
command = ["cat", "/proc/uptime"]
interval = "100ms"
topic = "systest/pc/cmd"
format = "json"
"""
MODES = ["none", "writeback", "lossy"]


def prepare(work, deb, accel, smp):
    """The campaign's disk: the base image with the .deb installed and the campaign's config,
    enabled so it starts at boot as on a Pi; a raw file, shut down cleanly."""
    prep = os.path.join(work, "prepare")
    os.makedirs(prep)
    overlay = os.path.join(prep, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                    os.path.join(IMAGES, "base.img"), overlay], check=True)
    payload = make_payload(prep, {os.path.basename(deb): deb, "telemetryd.toml": CONFIG.encode()})
    vm = Guest(prep, overlay, accel=accel, payload=payload, smp=smp)
    try:
        vm.connect()
        for cmd in ("mkdir -p /mnt/p && mount -o ro /dev/vdb /mnt/p",
                    f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q /mnt/p/{os.path.basename(deb)}",
                    "install -m 644 /mnt/p/telemetryd.toml /etc/telemetryd/telemetryd.toml",
                    # The guest writes dirty pages back within 0.5-1 s instead of 5-30 s, so
                    # at a cut the disk holds plenty written but not yet flushed, which the
                    # lossy disk then drops (with the defaults, about 4 KiB per cut).
                    "printf 'vm.dirty_writeback_centisecs = 50\\nvm.dirty_expire_centisecs = 100\\n' "
                    ">/etc/sysctl.d/90-systest.conf",
                    "telemetryd check --config /etc/telemetryd/telemetryd.toml --quiet",
                    "systemctl enable telemetryd.service", "umount /mnt/p"):
            # Generous: under TCG on a busy machine one apt-get install was seen to take more
            # than 300 s (it takes about a minute on a quiet one).
            rc, out = vm.run(cmd, 900)
            if rc:
                raise RuntimeError(f"prepare: {cmd}: {out[-400:]}")
        vm.poweroff()
    finally:
        vm.kill()
    disk = os.path.join(work, "disk.raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", overlay, disk], check=True)
    os.unlink(overlay)
    return disk


def campaign(work, deb, broker, accel, smp, cuts, seed, hold=(0.0, 12.0), drain_only=False):
    """Runs `cuts` cut boots and a final draining boot; writes work/boots.jsonl, work/received.
    drain_only: only the draining boot, of the disk a stopped campaign left in work."""
    rng = random.Random(seed)
    disk = os.path.join(work, "disk.raw") if drain_only else prepare(work, deb, accel, smp)
    nbd_sock = os.path.join(work, "nbd.sock")
    nbd_log = os.path.join(work, "nbd.log")
    nbd = subprocess.Popen([sys.executable, os.path.join(HERE, "lossy-nbd.py"), disk, nbd_sock, "--log", nbd_log])
    sub = Subscriber(work, broker.port, "systest/pc/#", append=drain_only)
    bridge = Bridge(broker.port)
    done = [json.loads(line) for line in read_lines(os.path.join(work, "boots.jsonl"))]
    if not drain_only:
        with open(os.path.join(work, "campaign.json"), "w") as f:
            json.dump({"sensors": SENSORS, "cuts": cuts, "seed": seed, "accel": accel, "smp": smp}, f)
    boots = open(os.path.join(work, "boots.jsonl"), "a", buffering=1)
    damaged_before = done[-1]["damaged"] if done else 0
    lossy_boots = len([line for line in read_lines(nbd_log) if line.startswith("cut ")])
    try:
        wait_for("lossy-nbd socket", lambda: os.path.exists(nbd_sock), 10)
        stop = os.path.join(work, "STOP")  # touch it to end a long campaign early, drained
        for i in range(len(done), len(done) + cuts + 1):
            last = i == cuts or os.path.exists(stop) or drain_only
            mode = "none" if last else MODES[i % len(MODES)]
            reachable = last or rng.random() < 0.6
            rec = boot(work, i, disk, nbd_sock, mode, reachable, last, accel, smp, bridge, rng, hold)
            rec["damaged_new"] = rec["damaged"] - damaged_before
            damaged_before = rec["damaged"]
            if mode == "lossy":  # the server's line about this connection (written once it saw qemu go)
                lossy_boots += 1
                lines = wait_for("lossy-nbd's log line", lambda: (ls := read_lines(nbd_log)) and
                                 len(ls) >= lossy_boots and ls, 30)
                rec["nbd"] = lines[lossy_boots - 1]
            boots.write(json.dumps(rec) + "\n")
            log(f"boot {i}: {mode:9} broker {'up  ' if reachable else 'down'} agent {rec['agent_s']:.0f} s, "
                f"active {rec['active_s']:.0f} s, first publish {rec['first_publish_s']}, "
                f"{'cut' if not last else 'drained'} at {rec['cut_s']:.1f} s, damaged+{rec['damaged_new']}"
                + (f", {rec.get('nbd')}" if mode == "lossy" else ""))
            if last:
                break
        # Let the subscriber take the last of them.
        wait_for("subscriber quiet", lambda: time.time() - os.path.getmtime(sub.path) > 3, 60)
    finally:
        bridge.quit = True
        sub.stop()
        nbd.terminate()
        nbd.wait()
        boots.close()


def read_lines(path):
    return open(path).read().splitlines() if os.path.exists(path) else []


def boot(work, i, disk, nbd_sock, mode, reachable, last, accel, smp, bridge, rng, hold):
    d = os.path.join(work, f"boot-{i:03}")
    os.makedirs(d)
    if mode == "lossy":
        vm = Guest(d, f"nbd:unix:{nbd_sock}", accel=accel, cache="none", fmt="raw", smp=smp)
    else:
        vm = Guest(d, disk, accel=accel, cache=mode, smp=smp)
    bridge.attach(vm.mqtt_path, reachable)
    rec = {"boot": i, "mode": mode, "reachable": reachable, "final": last, "t_start": vm.started}
    try:
        rec["agent_s"] = vm.connect()
        rec["offset"], rec["offset_err"] = vm.clock_offset()

        def active():
            return vm.run("systemctl is-active telemetryd.service", 30)[1] == "active"

        wait_for("telemetryd active", active, 300, 0.5)
        rec["t_active"] = time.time()
        rec["active_s"] = rec["t_active"] - vm.started
        _, ls = vm.run("ls /var/lib/telemetryd")
        rec["damaged"] = sum(1 for n in ls.split() if ".damaged-" in n)
        _, errs = vm.run("journalctl -u telemetryd.service -b -p warning -o cat -q --no-pager | tail -5")
        rec["warnings"] = errs[-1000:]
        if last:
            # New readings keep some always in flight: slow the sensors down (a reload keeps
            # the buffer) so the backlog can be seen at 0.
            vm.run("sed -i 's/^interval = .*/interval = \"1h\"/' /etc/telemetryd/telemetryd.toml && "
                   "systemctl reload telemetryd.service", 60)

            def drained():
                st = vm.run("systemctl show -p StatusText --value telemetryd.service")[1]
                return st.startswith("connected") and " 0 buffered" in st and st
            rec["drain_status"] = wait_for("backlog drained", drained, 1800, 2)
            vm.run("systemctl stop telemetryd.service", 60)
            rec["t_cut"] = time.time()
            _, rec["left_in_store"] = vm.run("telemetryd buffer --config /etc/telemetryd/telemetryd.toml")
            vm.poweroff()
        else:
            at = rec["t_active"] + rng.uniform(*hold)
            if at - 3 > time.time():
                time.sleep(at - 3 - time.time())
                rec["offset2"], _ = vm.clock_offset(tries=1)
            time.sleep(max(0.0, at - time.time()))
            rec["t_cut"] = time.time()
            vm.kill()
    except Exception as e:  # a boot that went wrong is recorded, cut, and the campaign goes on
        rec.setdefault("t_cut", time.time())
        rec["error"] = f"{type(e).__name__}: {e}"
        rec.setdefault("damaged", 0)
        vm.kill()
    fp = bridge.first_publish
    rec["first_publish_s"] = round(fp - vm.started, 1) if fp and fp < rec["t_cut"] else None
    rec["cut_s"] = rec["t_cut"] - vm.started
    for k in ("agent_s", "active_s"):
        rec.setdefault(k, float("nan"))
    return rec
