"""The system test's machinery: a Debian guest in qemu with no IP network, its agent on the
virtio-serial port "ctl", a host Mosquitto, a bridge from the guest's port "mqtt" to it, and a
recording subscriber."""
import atexit
import base64
import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
IMAGES = os.path.join(ROOT, "target", "system")


# Every qemu still running: killed when the test exits, however it exits.
LIVE = set()
atexit.register(lambda: [p.kill() for p in list(LIVE) if p.poll() is None])


def log(msg):
    print(time.strftime("%H:%M:%S ") + msg, flush=True)


def wait_for(what, cond, timeout, step=0.2):
    """Polls cond() until it returns something true; raises TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(step)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A private Mosquitto with persistence on a free 127.0.0.1 port."""

    def __init__(self, work):
        self.port = free_port()
        self.dir = os.path.join(work, "broker")
        os.makedirs(self.dir, exist_ok=True)
        conf = os.path.join(self.dir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {self.dir}/\nautosave_interval 1\n"
                    "max_queued_messages 1000000\nmax_inflight_messages 20\n")
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", conf], stdout=open(os.path.join(self.dir, "log"), "w"),
                                     stderr=subprocess.STDOUT)
        wait_for("mosquitto listening", self._up, 10)

    def _up(self):
        if self.proc.poll() is not None:
            raise RuntimeError("mosquitto exited: " + open(os.path.join(self.dir, "log")).read())
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


class Subscriber:
    """mosquitto_sub at QoS 1 on a persistent session, one line per message: time, topic, payload."""

    def __init__(self, work, port, topic="systest/#", append=False):
        self.path = os.path.join(work, "received")
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-c",
             "-i", "systest-sub-" + topic.split("/")[1], "-t", topic, "-F", "%U %t %p"],
            stdout=open(self.path, "a" if append else "w"), stderr=subprocess.DEVNULL)

    def messages(self):
        """[(host receive time, topic, payload)] so far."""
        out = []
        with open(self.path, errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split(" ", 2)
                if len(parts) == 3 and line.endswith("\n"):
                    out.append((float(parts[0]), parts[1], parts[2]))
        return out

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def take_packet(buf):
    """Splits one whole MQTT packet off the front of buf: (packet, rest) or (None, buf)."""
    length, mult, i = 0, 1, 1
    while True:
        if i >= len(buf):
            return None, buf
        byte = buf[i]
        length += (byte & 0x7F) * mult
        mult *= 128
        i += 1
        if not byte & 0x80 or i > 4:
            break
    end = i + length
    return (buf[:end], buf[end:]) if len(buf) >= end else (None, buf)


class Bridge(threading.Thread):
    """Host end of the guest's port "mqtt": each MQTT CONNECT the guest sends opens a new
    connection to the broker (the port is one byte stream for all of the daemon's successive
    connections). With reachable False, a CONNECT is answered by closing the port, as a broker
    that is down refuses connections. Records when the first PUBLISH of this boot went out."""

    def __init__(self, broker_port):
        super().__init__(daemon=True)
        self.port = broker_port
        self.reachable = True
        self.path = None
        self.first_publish = None
        self.quit = False
        self.start()

    def attach(self, path, reachable):
        self.reachable = reachable
        self.first_publish = None
        self.path = path

    def run(self):
        while not self.quit:
            path = self.path
            if not path:
                time.sleep(0.1)
                continue
            try:
                g = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                g.connect(path)
            except OSError:
                time.sleep(0.2)
                continue
            try:
                self._pump(g, path)
            except OSError:
                pass
            g.close()
            if self.path != path:
                continue  # a new boot's port: nothing of the old guest can be waiting
            # Stay away long enough for the guest to see the port closed. Back at once, the
            # guest's socat can be woken by the hang-up, then block in read() because the port
            # is connected again: stuck there, it never takes the daemon's next connection
            # (127.0.0.1:1883 refuses it) and nothing ever comes from this end to wake it.
            time.sleep(2)

    def _pump(self, g, path):
        b, buf = None, b""
        try:
            while not self.quit and self.path == path:
                r, _, _ = select.select([g] + ([b] if b else []), [], [], 0.2)
                if g in r:
                    data = g.recv(65536)
                    if not data:
                        return
                    buf += data
                    while True:
                        pkt, buf = take_packet(buf)
                        if pkt is None:
                            break
                        kind = pkt[0] >> 4
                        if kind == 1:  # CONNECT: a new connection of the daemon
                            if b:
                                b.close()
                                b = None
                            if not self.reachable:
                                return  # refused: the guest sees its connection closed
                            try:
                                b = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                            except OSError:
                                return
                        elif kind == 3 and self.first_publish is None and b:
                            self.first_publish = time.time()
                        if b:
                            b.sendall(pkt)
                if b and b in r:
                    data = b.recv(65536)
                    if not data:
                        return  # the broker closed it: so does the guest's end
                    g.sendall(data)
                if b and not self.reachable:
                    return
        finally:
            if b:
                b.close()


def accel():
    """'kvm' where a stock kernel boots under it here, else 'tcg'. Decided once per machine by
    trying (a paravirtual /dev/kvm can hang the kernel after "Probing EDD") and cached."""
    cache = os.path.join(IMAGES, "accel")
    if os.path.exists(cache):
        return open(cache).read().strip()
    choice = "tcg"
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        with tempfile.TemporaryDirectory() as work:
            disk = os.path.join(work, "probe.qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                            os.path.join(IMAGES, "base.img"), disk], check=True)
            vm = Guest(work, disk, accel="kvm")
            try:
                vm.connect(timeout=45)
                choice = "kvm"
            except (TimeoutError, RuntimeError, OSError) as e:
                tail = open(vm.console, errors="replace").read()[-300:].replace("\n", " | ")
                log(f"KVM does not boot this kernel here ({e}; console ends: {tail}): using TCG")
            finally:
                vm.kill()
    with open(cache, "w") as f:
        f.write(choice + "\n")
    return choice


class Guest:
    """One boot of the image: qemu with the disk, the ports ctl and mqtt, and an optional
    second disk (the payload: the .deb and configs)."""

    def __init__(self, work, disk, accel="tcg", cache="none", fmt=None, payload=None, smp=2):
        self.work = work
        self.ctl_path = os.path.join(work, "ctl.sock")
        self.mqtt_path = os.path.join(work, "mqtt.sock")
        self.console = os.path.join(work, "console.log")
        for p in (self.ctl_path, self.mqtt_path):
            if os.path.exists(p):
                os.unlink(p)
        fmt = fmt or ("qcow2" if disk.endswith(".qcow2") else "raw")
        acc = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg,thread=multi", "-cpu", "max"]
        cmd = ["nice", "-n", "10", "qemu-system-x86_64", *acc, "-m", "512", "-smp", str(smp),
               "-display", "none", "-no-reboot", "-nic", "none", "-serial", f"file:{self.console}",
               "-kernel", os.path.join(IMAGES, "vmlinuz"), "-initrd", os.path.join(IMAGES, "initrd.img"),
               "-append", "root=/dev/vda rw console=ttyS0 quiet panic=-1 systemd.show_status=0",
               "-drive", f"file={disk},if=virtio,format={fmt},cache={cache}",
               "-device", "virtio-serial",
               "-chardev", f"socket,id=ctl,path={self.ctl_path},server=on,wait=off",
               "-device", "virtserialport,chardev=ctl,name=ctl",
               "-chardev", f"socket,id=mqtt,path={self.mqtt_path},server=on,wait=off",
               "-device", "virtserialport,chardev=mqtt,name=mqtt"]
        if payload:
            cmd += ["-drive", f"file={payload},if=virtio,format=raw,readonly=on"]
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, stdout=open(os.path.join(work, "qemu.log"), "w"),
                                     stderr=subprocess.STDOUT)
        self.sock = None
        self.buf = b""
        self.next_id = 0
        self.heard = False
        LIVE.add(self.proc)

    def connect(self, timeout=240):
        """Waits for the agent to answer (the guest has booted far enough)."""
        wait_for("qemu's ctl socket", lambda: self._alive() and os.path.exists(self.ctl_path), 30)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.ctl_path)
        # One ping at a time, answered or not: on a slow emulated CPU a flood of pings would
        # keep the agent busy answering ones the host has given up on.
        deadline = time.monotonic() + timeout
        while True:
            self._alive()
            try:
                if self.run("ping", timeout=10) == (0, "pong"):
                    return time.time() - self.started
            except TimeoutError:
                if self.heard:  # the agent is up, only slow: ask once more, patiently
                    if self.run("ping", timeout=max(10, deadline - time.monotonic())) == (0, "pong"):
                        return time.time() - self.started
            if time.monotonic() > deadline:
                raise TimeoutError(f"the guest's agent did not answer within {timeout} s")

    def _alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"qemu exited ({self.proc.returncode}): "
                               + open(os.path.join(self.work, "qemu.log")).read()[-500:])
        return True

    def run(self, cmd, timeout=120):
        """Runs a shell command in the guest: (exit status, output)."""
        self.next_id += 1
        ident = str(self.next_id)
        self.sock.sendall(f"{ident}\t{cmd}\n".encode())
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                parts = line.decode(errors="replace").split(" ", 2)
                if len(parts) != 3:
                    continue
                self.heard = True
                if parts[0] == ident:
                    if parts[2].startswith("="):
                        return int(parts[1]), parts[2][1:]
                    return int(parts[1]), base64.b64decode(parts[2]).decode(errors="replace").strip()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"guest command {cmd!r}: no answer within {timeout} s")
            r, _, _ = select.select([self.sock], [], [], min(left, 1))
            if r:
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self._alive()  # qemu gone: says so, with its last words
                    raise RuntimeError("the ctl port closed")
                self.buf += data
            else:
                self._alive()

    def clock_offset(self, tries=3):
        """guest clock - host clock in seconds, from the quickest of a few round trips."""
        best = None
        for _ in range(tries):
            t0 = time.time()
            _, out = self.run("clock", timeout=30)
            t1 = time.time()
            if best is None or t1 - t0 < best[0]:
                best = (t1 - t0, float(out) - (t0 + t1) / 2)
        return best[1], best[0] / 2

    def kill(self):
        """The power cut: SIGKILL to qemu."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        LIVE.discard(self.proc)
        if self.sock:
            self.sock.close()

    def poweroff(self, timeout=120):
        try:
            self.run("systemctl --no-block poweroff", timeout=10)
        except (TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout)
            LIVE.discard(self.proc)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError("the guest did not power off")
        if self.sock:
            self.sock.close()


def make_payload(work, files):
    """A small ext4 image (the guest's /dev/vdb) holding the given {name: path or bytes}."""
    src = os.path.join(work, "payload")
    os.makedirs(src, exist_ok=True)
    for name, content in files.items():
        dst = os.path.join(src, name)
        if isinstance(content, bytes):
            with open(dst, "wb") as f:
                f.write(content)
        else:
            shutil.copy(content, dst)
    img = os.path.join(work, "payload.img")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", src, img, "64M"], check=True)
    return img
