"""Real OpenSSH `sshd` processes on 127.0.0.1, one per fake host, for tests and benchmarks.

Each SshdHost has its own port, host key and work dir; the client key is authorised by an
absolute AuthorizedKeysFile. `kill()` SIGKILLs the listener *and* every process it spawned (the
per-connection sshd children and the commands they run), which is what a host dying looks like
to latbench; `start()` again brings it back on the same port with the same host key.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")
INSTALL_HINT = ("OpenSSH server (sshd) is not installed; the device tests need it: run "
                "`bash scripts/install-test-deps.sh` as root (apt-get install openssh-server)")


def find_sshd() -> str | None:
    found = shutil.which("sshd")
    if found:
        return found
    for path in SSHD_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, comment: str = "latbench-test") -> Path:
    """An unencrypted ed25519 key pair at path / path.pub."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True, stdin=subprocess.DEVNULL)
    return path


def encrypted_copy(key: Path, dest: Path, passphrase: str) -> Path:
    """A copy of the private key `key` (same key pair) encrypted with `passphrase`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(key, dest)
    dest.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", passphrase, "-f", str(dest)],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return dest


class SshAgent:
    """A real ssh-agent on a private socket, holding keys added with their passphrase (given
    to ssh-add through an askpass script, as a desktop session would)."""

    def __init__(self, root: Path) -> None:
        if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
            raise RuntimeError("ssh-agent/ssh-add (openssh-client) are not installed")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket = self.root / "agent.sock"
        self.proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(self.socket)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10.0
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("ssh-agent did not create its socket")
            time.sleep(0.02)

    def add(self, key: Path, passphrase: str) -> None:
        askpass = self.root / "askpass"
        askpass.write_text(f"#!/bin/sh\necho '{passphrase}'\n")
        askpass.chmod(0o700)
        env = {**os.environ, "SSH_AUTH_SOCK": str(self.socket), "SSH_ASKPASS": str(askpass),
               "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
        subprocess.run(["ssh-add", str(key)], check=True, env=env, stdin=subprocess.DEVNULL,
                       capture_output=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def descendants(pid: int) -> list[int]:
    """All live descendants of pid (from /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class SshdHost:
    """One sshd on 127.0.0.1 (a fake host)."""

    def __init__(self, root: Path, authorized_key: Path, name: str = "host",
                 port: int | None = None) -> None:
        sshd = find_sshd()
        if sshd is None:
            raise RuntimeError(INSTALL_HINT)
        self.sshd = sshd
        self.name = name
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host_key = self.root / "ssh_host_ed25519_key"
        if not self.host_key.exists():
            keygen(self.host_key, f"{name}-host")
        self.authorized_keys = self.root / "authorized_keys"
        self.authorized_keys.write_text(Path(f"{authorized_key}.pub").read_text())
        self.work_dir = self.root / "work"
        self.work_dir.mkdir(exist_ok=True)
        self.home = self.root / "home"
        self.home.mkdir(exist_ok=True)
        self.config = self.root / "sshd_config"
        self.log = self.root / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        self.config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PidFile none",
            "UsePAM no",
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "Subsystem sftp internal-sftp",
            "UseDNS no",
            "PrintMotd no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            "LogLevel ERROR",
            # A clean home for the fake host's user: the login shell then skips the test
            # machine's own ~/.bashrc (here: pyenv init, 0.25 s per command).
            f"SetEnv HOME={self.home}",
            "",
        ]))

    def known_hosts_line(self) -> str:
        key_type, key_b64 = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {key_type} {key_b64}\n"

    def start(self, timeout_s: float = 20.0) -> SshdHost:
        if self.proc is not None and self.proc.poll() is None:
            return self
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.write_config()
        log = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen([self.sshd, "-D", "-e", "-f", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd {self.name} exited with {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"sshd {self.name} did not answer on port {self.port} within "
                           f"{timeout_s:g} s")

    def kill(self) -> None:
        """SIGKILL the listener and everything it spawned (sessions, the commands they run).

        The tree is frozen first (SIGSTOP), so nothing forks or gets re-parented while it is
        being collected; then every process of it is killed.
        """
        if self.proc is None:
            return
        pid = self.proc.pid
        frozen: set[int] = set()
        for _ in range(3):
            tree = [pid, *descendants(pid)]
            for p in tree:
                if p not in frozen:
                    _signal(p, signal.SIGSTOP)
                    frozen.add(p)
            for p in list(frozen):
                frozen.update(descendants(p))
        for p in frozen:
            _signal(p, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    stop = kill

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
