#!/usr/bin/env python3
"""A disk that loses unflushed writes at a power cut: an NBD server over a raw image file that
keeps every write in memory until the client sends FLUSH (or a write with FUA), and throws
away whatever is still unflushed when the connection drops without NBD_CMD_DISC (qemu killed
with -9). Like a disk with a volatile write cache and no power-loss protection, the most
pessimistic kind: nothing unflushed survives.

    lossy-nbd.py IMAGE SOCKET [--log FILE]   serve IMAGE on the unix socket, one client at a time
    lossy-nbd.py --selftest                  checks that it really loses unflushed writes

qemu: -drive file=nbd:unix:SOCKET,format=raw,if=virtio,cache=none
The log gets one line per connection: how many sectors were flushed, and how many lost.
"""
import os
import socket
import struct
import sys
import tempfile
import threading

SECTOR = 512
# Unflushed data above this is written back (a real disk cache is bounded too).
MAX_PENDING = 64 << 20

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
OPT_EXPORT_NAME, OPT_ABORT, OPT_INFO, OPT_GO = 1, 2, 6, 7
REP_ACK, REP_INFO, REP_ERR_UNSUP = 1, 3, 0x80000001
FLAG_HAS_FLAGS, FLAG_SEND_FLUSH, FLAG_SEND_FUA = 1, 4, 8
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
CMD_FLAG_FUA = 1
EINVAL, ENOSPC = 22, 28


def recv_exact(conn, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("client gone")
        buf += chunk
    return bytes(buf)


class Disk:
    """The image file plus the volatile cache: sector number -> 512 bytes not yet on the file."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR)
        self.size = os.fstat(self.fd).st_size
        self.pending = {}

    def read(self, offset, length):
        data = bytearray(os.pread(self.fd, length, offset))
        data += bytes(length - len(data))
        if self.pending:
            first, last = offset // SECTOR, (offset + length - 1) // SECTOR
            for sector in range(first, last + 1):
                cached = self.pending.get(sector)
                if cached is None:
                    continue
                start = sector * SECTOR
                lo, hi = max(start, offset), min(start + SECTOR, offset + length)
                data[lo - offset:hi - offset] = cached[lo - start:hi - start]
        return bytes(data)

    def write(self, offset, data, fua):
        pos = 0
        while pos < len(data):
            sector = (offset + pos) // SECTOR
            start = sector * SECTOR
            within = offset + pos - start
            n = min(SECTOR - within, len(data) - pos)
            if within or n < SECTOR:  # a partial sector: merge with what the disk would read
                block = bytearray(self.read(start, SECTOR))
                block[within:within + n] = data[pos:pos + n]
            else:
                block = data[pos:pos + n]
            self.pending[sector] = bytes(block)
            pos += n
        if fua:
            for sector in range(offset // SECTOR, (offset + len(data) - 1) // SECTOR + 1):
                os.pwrite(self.fd, self.pending.pop(sector), sector * SECTOR)
            os.fsync(self.fd)
        elif len(self.pending) * SECTOR > MAX_PENDING:
            self.flush()

    def flush(self):
        n = len(self.pending)
        for sector in sorted(self.pending):
            os.pwrite(self.fd, self.pending[sector], sector * SECTOR)
        self.pending.clear()
        os.fsync(self.fd)
        return n

    def drop(self):
        n = len(self.pending)
        self.pending.clear()
        return n


def negotiate(conn, disk):
    conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 1 | 2))  # FIXED_NEWSTYLE | NO_ZEROES
    (client_flags,) = struct.unpack(">I", recv_exact(conn, 4))
    tflags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA

    def reply(opt, kind, data=b""):
        conn.sendall(struct.pack(">QIII", REPLY_MAGIC, opt, kind, len(data)) + data)

    while True:
        magic, opt, length = struct.unpack(">QII", recv_exact(conn, 16))
        if magic != IHAVEOPT or length > 4096:
            raise ConnectionError("bad option")
        data = recv_exact(conn, length)
        if opt == OPT_EXPORT_NAME:
            tail = b"" if client_flags & 2 else bytes(124)
            conn.sendall(struct.pack(">QH", disk.size, tflags) + tail)
            return
        if opt in (OPT_INFO, OPT_GO):
            reply(opt, REP_INFO, struct.pack(">HQH", 0, disk.size, tflags))
            reply(opt, REP_ACK)
            if opt == OPT_GO:
                return
        elif opt == OPT_ABORT:
            reply(opt, REP_ACK)
            raise ConnectionError("client aborted")
        else:
            reply(opt, REP_ERR_UNSUP)


def serve_one(conn, disk):
    """Serves one connection; returns (sectors flushed, sectors lost, clean disconnect)."""
    flushed = 0
    try:
        negotiate(conn, disk)
        while True:
            magic, flags, kind, handle, offset, length = struct.unpack(">IHHQQI", recv_exact(conn, 28))
            if magic != REQUEST_MAGIC:
                raise ConnectionError("bad request magic")
            if kind == CMD_DISC:
                flushed += disk.flush()
                return flushed, 0, True
            bad = offset + length > disk.size or length > 64 << 20
            if kind == CMD_WRITE:
                data = recv_exact(conn, length)
                if not bad:
                    disk.write(offset, data, flags & CMD_FLAG_FUA)
                conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, ENOSPC if bad else 0, handle))
            elif kind == CMD_READ:
                if bad:
                    conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, EINVAL, handle))
                else:
                    conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, handle) + disk.read(offset, length))
            elif kind == CMD_FLUSH:
                flushed += disk.flush()
                conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, handle))
            else:
                conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, EINVAL, handle))
    except (ConnectionError, OSError):
        return flushed, disk.drop(), False


def serve(image, path, log):
    disk = Disk(image)
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    while True:
        conn, _ = srv.accept()
        with conn:
            flushed, lost, clean = serve_one(conn, disk)
        if log:
            with open(log, "a") as out:
                out.write(f"{'disconnect' if clean else 'cut'} flushed_sectors={flushed} lost_sectors={lost}\n")


def selftest():
    """A raw NBD client: a flushed write survives a dropped connection, an unflushed one does not."""
    with tempfile.TemporaryDirectory() as tmp:
        image, path, log = os.path.join(tmp, "disk"), os.path.join(tmp, "sock"), os.path.join(tmp, "log")
        with open(image, "wb") as f:
            f.truncate(1 << 20)
        threading.Thread(target=serve, args=(image, path, log), daemon=True).start()
        handle = [0]

        def connect():
            for _ in range(100):
                try:
                    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    c.connect(path)
                    break
                except OSError:
                    threading.Event().wait(0.05)
            recv_exact(c, 18)
            c.sendall(struct.pack(">I", 2))
            c.sendall(struct.pack(">QII", IHAVEOPT, OPT_EXPORT_NAME, 0))
            recv_exact(c, 10)
            return c

        def request(c, kind, offset=0, data=b"", length=None, flags=0):
            handle[0] += 1
            length = len(data) if length is None else length
            c.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, kind, handle[0], offset, length) + data)
            magic, err, h = struct.unpack(">IIQ", recv_exact(c, 16))
            assert (magic, err, h) == (SIMPLE_REPLY_MAGIC, 0, handle[0]), (magic, err, h)
            return recv_exact(c, length) if kind == CMD_READ else None

        c = connect()
        request(c, CMD_WRITE, 0, b"A" * 4096)
        request(c, CMD_FLUSH)
        request(c, CMD_WRITE, 8192, b"B" * 1000)  # unaligned, unflushed
        request(c, CMD_WRITE, 16384, b"F" * 512, flags=CMD_FLAG_FUA)
        assert request(c, CMD_READ, 8192, length=1000) == b"B" * 1000, "reads see unflushed writes"
        c.close()  # the power cut: no NBD_CMD_DISC
        c = connect()
        assert request(c, CMD_READ, 0, length=4096) == b"A" * 4096, "a flushed write was lost"
        assert request(c, CMD_READ, 8192, length=1000) == bytes(1000), "an unflushed write survived the cut"
        assert request(c, CMD_READ, 16384, length=512) == b"F" * 512, "a FUA write was lost"
        request(c, CMD_WRITE, 8192, b"C" * 512)
        c.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 99, 0, 0))  # a clean disconnect
        c.close()
        c = connect()
        assert request(c, CMD_READ, 8192, length=512) == b"C" * 512, "a clean disconnect lost a write"
        c.close()
        for _ in range(100):
            lines = open(log).read().splitlines() if os.path.exists(log) else []
            if len(lines) >= 3:
                break
            threading.Event().wait(0.05)
        assert lines[0] == "cut flushed_sectors=8 lost_sectors=2", lines
        print("lossy-nbd selftest: ok (flushed and FUA writes kept, unflushed writes lost at the cut)")


if __name__ == "__main__":
    if sys.argv[1:] == ["--selftest"]:
        selftest()
    elif len(sys.argv) in (3, 5):
        serve(sys.argv[1], sys.argv[2], sys.argv[4] if len(sys.argv) == 5 and sys.argv[3] == "--log" else None)
    else:
        sys.exit(__doc__)
