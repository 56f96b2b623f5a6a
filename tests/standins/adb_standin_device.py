"""StandInAdbDevice: a FAKE Android device for tests; it runs commands on this host.

It speaks the subset of the ADB device protocol latbench needs, over TCP, so the REAL adb
server can `adb connect 127.0.0.1:PORT` to it and the real adb client can `shell`, `push` and
`pull` through it. Written from the public protocol descriptions (AOSP protocol.txt, SYNC.TXT,
the shell v2 packet format); no code was copied.

Transport messages: a 24-byte little-endian header (command, arg0, arg1, payload length,
payload byte sum, command ^ 0xffffffff) and a payload. The host sends CNXN; we answer CNXN at
once (no AUTH: like a device with `ro.adb.secure=0`) with a banner advertising `shell_v2`.
Streams: the host sends OPEN(local id, 0, "service\\0"); we answer OKAY(our id, its id); data
goes in WRTE messages, each acknowledged by an OKAY before the next WRTE may be sent on that
stream; CLSE ends a stream.
Services: "shell,v2,...:CMD" (packets: id byte, u32 length, data; 0 stdin, 1 stdout, 2 stderr,
3 exit code, 4 close stdin), "shell:CMD" (v1: raw merged output, no exit code) and "sync:"
(requests: 4-byte id, u32 length, payload; STAT, LIST, SEND/DATA/DONE, RECV, QUIT).
Commands run as `sh -c CMD` in their own session (as adbd runs them); when the host closes a
shell stream the command is NOT killed (adbd's behaviour differs between versions), so latbench
has to kill what it started.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import stat
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

A_CNXN, A_OPEN, A_OKAY, A_WRTE, A_CLSE, A_AUTH = (
    int.from_bytes(name, "little") for name in (b"CNXN", b"OPEN", b"OKAY", b"WRTE", b"CLSE",
                                                 b"AUTH"))
A_VERSION = 0x01000001
MAX_PAYLOAD = 256 * 1024
SYNC_DATA_MAX = 64 * 1024
HEADER = struct.Struct("<6I")

SHELL_STDIN, SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT, SHELL_CLOSE_STDIN = 0, 1, 2, 3, 4


def _checksum(data: bytes) -> int:
    return sum(data) & 0xFFFFFFFF


def pack_message(command: int, arg0: int, arg1: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(command, arg0, arg1, len(payload), _checksum(payload),
                       command ^ 0xFFFFFFFF) + payload


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


class _Stream:
    """One open stream: inbound WRTE payloads queue up; outbound writes wait for OKAY."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self.inbox: queue.Queue[bytes | None] = queue.Queue()
        self.buffer = bytearray()
        self.can_write = threading.Event()
        self.can_write.set()
        self.closed = threading.Event()

    # inbound
    def read_exact(self, n: int) -> bytes | None:
        while len(self.buffer) < n:
            item = self.inbox.get()
            if item is None:
                return None
            self.buffer += item
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    # outbound
    def write(self, data: bytes) -> bool:
        for start in range(0, len(data), self.conn.max_payload):
            while not self.can_write.wait(0.2):
                if self.closed.is_set():
                    return False
            if self.closed.is_set():
                return False
            self.can_write.clear()
            self.conn.send(A_WRTE, self.local_id, self.remote_id,
                           data[start:start + self.conn.max_payload])
        return True

    def close(self, tell_host: bool = True) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.inbox.put(None)
        if tell_host:
            self.conn.send(A_CLSE, self.local_id, self.remote_id)
        self.conn.streams.pop(self.local_id, None)


class _Connection:
    """One TCP connection from the adb server."""

    def __init__(self, device: StandInAdbDevice, sock: socket.socket) -> None:
        self.device, self.sock = device, sock
        self.max_payload = 4096
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.send_lock = threading.Lock()

    def send(self, command: int, arg0: int, arg1: int, payload: bytes = b"") -> None:
        with self.send_lock, contextlib.suppress(OSError):
            self.sock.sendall(pack_message(command, arg0, arg1, payload))

    def serve(self) -> None:
        try:
            while not self.device.stopping.is_set():
                header = _recv_exact(self.sock, HEADER.size)
                if header is None:
                    return
                command, arg0, arg1, length, _check, magic = HEADER.unpack(header)
                if magic != command ^ 0xFFFFFFFF or length > MAX_PAYLOAD:
                    return  # a corrupt message closes the connection, as the protocol says
                payload = _recv_exact(self.sock, length) if length else b""
                if payload is None:
                    return
                self.handle(command, arg0, arg1, payload)
        except OSError:
            return
        finally:
            for stream in list(self.streams.values()):
                stream.close(tell_host=False)
            with contextlib.suppress(OSError):
                self.sock.close()

    def handle(self, command: int, arg0: int, arg1: int, payload: bytes) -> None:
        if command == A_CNXN:
            self.max_payload = max(4096, min(arg1, MAX_PAYLOAD))
            self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, self.device.banner())
        elif command == A_OPEN:
            service = payload.rstrip(b"\0").decode("utf-8", errors="replace")
            self.open(arg0, service)
        elif command == A_OKAY:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.can_write.set()
        elif command == A_WRTE:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.inbox.put(payload)
                self.send(A_OKAY, stream.local_id, stream.remote_id)
        elif command == A_CLSE:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.close(tell_host=False)

    def open(self, remote_id: int, service: str) -> None:
        local_id = self.next_id
        self.next_id += 1
        handler = None
        name, _, rest = service.partition(":")
        options = name.split(",")
        if options[0] == "shell" and rest:
            handler = self.device.shell_v2 if "v2" in options[1:] else self.device.shell_v1
        elif service.startswith("sync:"):
            handler = self.device.sync
        if handler is None:
            self.device.log.append(f"refused service {service!r}")
            self.send(A_CLSE, 0, remote_id)
            return
        stream = _Stream(self, local_id, remote_id)
        self.streams[local_id] = stream
        self.send(A_OKAY, local_id, remote_id)
        threading.Thread(target=self._run, args=(handler, stream, rest), daemon=True).start()

    @staticmethod
    def _run(handler, stream: _Stream, arg: str) -> None:
        try:
            handler(stream, arg)
        finally:
            stream.close()


class StandInAdbDevice:
    """A fake Android device on 127.0.0.1:PORT (serial "127.0.0.1:PORT") for tests."""

    def __init__(self, model: str = "latbench-standin", features: tuple[str, ...] = ("shell_v2",),
                 env: dict[str, str] | None = None) -> None:
        self.model = model
        self.features = features
        self.env = env
        self.log: list[str] = []  # services opened and commands run, for assertions
        self.stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._connections: list[_Connection] = []
        self.port = 0

    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.port}"

    def banner(self) -> bytes:
        props = (f"ro.product.name=standin;ro.product.model={self.model};"
                 f"ro.product.device=standin;features={','.join(self.features)}")
        return f"device::{props}".encode()

    def start(self) -> StandInAdbDevice:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        listener = self._listener
        while listener is not None and not self.stopping.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock)
            self._connections.append(conn)
            threading.Thread(target=conn.serve, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None
        for conn in self._connections:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    # --- shell -------------------------------------------------------------------------------
    def _spawn(self, command: str) -> subprocess.Popen[bytes]:
        self.log.append(f"shell {command}")
        return subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, env=self.env)

    def shell_v2(self, stream: _Stream, command: str) -> None:
        proc = self._spawn(command)

        def pump(pipe, packet_id: int) -> None:
            for chunk in iter(lambda: pipe.read1(SYNC_DATA_MAX), b""):
                if not stream.write(struct.pack("<BI", packet_id, len(chunk)) + chunk):
                    break
            pipe.close()

        def feed() -> None:  # stdin packets from the host
            while True:
                head = stream.read_exact(5)
                if head is None:
                    break
                packet_id, length = struct.unpack("<BI", head)
                data = stream.read_exact(length) if length else b""
                if data is None:
                    break
                if packet_id == SHELL_STDIN and proc.stdin is not None:
                    with contextlib.suppress(OSError):
                        proc.stdin.write(data)
                        proc.stdin.flush()
                elif packet_id == SHELL_CLOSE_STDIN:
                    break
            with contextlib.suppress(OSError):
                proc.stdin.close()

        threads = [threading.Thread(target=pump, args=(proc.stdout, SHELL_STDOUT), daemon=True),
                   threading.Thread(target=pump, args=(proc.stderr, SHELL_STDERR), daemon=True)]
        for t in threads:
            t.start()
        threading.Thread(target=feed, daemon=True).start()
        for t in threads:
            t.join()
        code = proc.wait()
        if not stream.closed.is_set():
            stream.write(struct.pack("<BI", SHELL_EXIT, 1) + bytes([code & 0xFF]))

    def shell_v1(self, stream: _Stream, command: str) -> None:
        proc = self._spawn(command)
        proc.stdin.close()
        for chunk in iter(lambda: proc.stdout.read1(SYNC_DATA_MAX), b""):
            if not stream.write(chunk):
                break
        proc.wait()

    # --- sync --------------------------------------------------------------------------------
    def sync(self, stream: _Stream, _arg: str) -> None:
        while True:
            head = stream.read_exact(8)
            if head is None:
                return
            request, length = head[:4], struct.unpack("<I", head[4:])[0]
            if request == b"QUIT":
                return
            if length > 4096:
                return
            path = stream.read_exact(length)
            if path is None:
                return
            text = path.decode("utf-8", errors="replace")
            self.log.append(f"sync {request.decode(errors='replace')} {text}")
            if request == b"STAT":
                stream.write(b"STAT" + self._stat(text))
            elif request == b"LIST":
                self._list(stream, text)
            elif request == b"SEND":
                if not self._send(stream, text):
                    return
            elif request == b"RECV":
                self._recv(stream, text)
            else:
                self._fail(stream, f"unsupported sync request {request!r}")
                return

    @staticmethod
    def _stat(path: str) -> bytes:
        try:
            st = os.lstat(path)
        except OSError:
            return struct.pack("<3I", 0, 0, 0)
        return struct.pack("<3I", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF,
                           int(st.st_mtime) & 0xFFFFFFFF)

    def _list(self, stream: _Stream, path: str) -> None:
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(path)):
                raw = name.encode()
                stream.write(b"DENT" + self._stat(os.path.join(path, name))
                             + struct.pack("<I", len(raw)) + raw)
        stream.write(b"DONE" + bytes(16))

    @staticmethod
    def _fail(stream: _Stream, message: str) -> None:
        raw = message.encode()
        stream.write(b"FAIL" + struct.pack("<I", len(raw)) + raw)

    def _send(self, stream: _Stream, spec: str) -> bool:
        path, _, mode_text = spec.rpartition(",")
        try:
            mode = int(mode_text)
        except ValueError:
            path, mode = spec, 0o644
        data = bytearray()
        while True:
            head = stream.read_exact(8)
            if head is None:
                return False
            kind, length = head[:4], struct.unpack("<I", head[4:])[0]
            if kind == b"DATA":
                chunk = stream.read_exact(length)
                if chunk is None:
                    return False
                data += chunk
            elif kind == b"DONE":
                break  # `length` is the mtime
            else:
                self._fail(stream, f"unexpected {kind!r} during SEND")
                return False
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)  # adbd makes parent dirs
            Path(path).write_bytes(bytes(data))
            os.chmod(path, stat.S_IMODE(mode) or 0o644)
        except OSError as exc:
            self._fail(stream, f"cannot write {path}: {exc.strerror}")
            return True
        stream.write(b"OKAY" + bytes(4))
        return True

    def _recv(self, stream: _Stream, path: str) -> None:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            self._fail(stream, f"cannot read {path}: {exc.strerror}")
            return
        for chunk in _chunks(data, SYNC_DATA_MAX):
            stream.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        stream.write(b"DONE" + bytes(4))


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]
