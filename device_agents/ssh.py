"""SSHTransport: a Linux device reached over SSH (paramiko), with host keys checked by default.

Why it is built this way:
- Host keys are verified against a known_hosts file. An unknown key is an error unless the user
  passed the explicit `insecure_accept_unknown_host_key` flag; a *changed* key is always an error
  (that is what a man in the middle looks like). Nothing is ever written to known_hosts.
- Commands travel as one string to the remote login shell, so argv is quoted and wrapped by
  device_agents.remote: the wrapper reports its pid and process group (sshd starts each command
  in a new session) before exec'ing the command, so a command that outlives its timeout is
  killed with its whole process group instead of being left running.
- Connection failures (refused, timeout, reset) are retried with exponential back-off;
  authentication and host-key failures are not (retrying cannot fix them).
- The private key is loaded here, not by paramiko's key search, so an encrypted key without a
  passphrase, a wrong passphrase or a file that is no key each get their own message; a
  known_hosts file is checked line by line, so a malformed line is named, not skipped.
- Keys, passwords and passphrases are never logged and never appear in errors or in repr().
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import select
import socket
import stat
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from latbench.device_agents.inventory import (
    InventoryFields,
    flag,
    integer,
    positive,
    text,
)
from latbench.device_agents.remote import (
    KILL_TIMEOUT_S,
    command_lines,
    kill_argv,
    split_pid,
    wrap_argv,
)
from latbench.device_agents.transport import (
    ClosesOnExit,
    CommandResult,
    LineCallback,
    LineFilter,
    check_argv,
    check_remote_path,
    check_timeout,
    decode,
    describe,
    register_transport,
)
from latbench.errors import ConfigError, TransportError

log = logging.getLogger(__name__)

_POLL_S = 0.05  # seconds between output polls when nothing arrived


class _UnknownHostKey(Exception):
    def __init__(self, host: str, key_type: str, fingerprint: str) -> None:
        super().__init__(host)
        self.host, self.key_type, self.fingerprint = host, key_type, fingerprint


def _fingerprint(key: Any) -> str:
    import base64
    import hashlib

    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@register_transport("ssh")
class SSHTransport(ClosesOnExit):
    """Run commands and copy files (SFTP) on a host over SSH; connects on first use.

    `known_hosts` defaults to ~/.ssh/known_hosts; `key_file` is the private key to log in with
    (~/.ssh keys are not searched, so the inventory says exactly which key is used);
    `passphrase` decrypts an encrypted key; `password` is used for password login (and to
    decrypt the key when no passphrase is given); `ssh_agent` also offers the keys of a running
    ssh-agent ($SSH_AUTH_SOCK). Secrets come from environment variables named in the inventory
    and are never logged.
    """

    name = "ssh"
    inventory = InventoryFields(
        fields={"host": text, "port": integer(1, 65535), "user": text, "key_file": text,
                "known_hosts": text, "insecure_accept_unknown_host_key": flag,
                "password_env": text, "passphrase_env": text, "ssh_agent": flag,
                "connect_timeout_s": positive, "connect_retries": integer(1)},
        required=("host",), paths=("key_file", "known_hosts"), work_dir="/tmp/latbench",
        python="python3")

    @classmethod
    def from_inventory(cls, values: Mapping[str, Any], env: Mapping[str, str]) -> Self:
        secrets = {}
        for secret, field_name in (("password", "password_env"), ("passphrase", "passphrase_env")):
            if field_name in values:
                secrets[secret] = env.get(values[field_name])
                if secrets[secret] is None:
                    raise ConfigError(f"field {field_name!r}: environment variable "
                                      f"{values[field_name]} is not set")
        retry = {k: values[k] for k in ("connect_timeout_s", "connect_retries") if k in values}
        return cls(values["host"], port=values.get("port", 22), user=values.get("user"),
                   key_file=values.get("key_file"), known_hosts=values.get("known_hosts"),
                   insecure_accept_unknown_host_key=values.get(
                       "insecure_accept_unknown_host_key", False),
                   ssh_agent=values.get("ssh_agent", False), **secrets, **retry)

    def __init__(self, host: str, *, port: int = 22, user: str | None = None,
                 key_file: str | os.PathLike[str] | None = None,
                 known_hosts: str | os.PathLike[str] | None = None,
                 insecure_accept_unknown_host_key: bool = False,
                 password: str | None = None, passphrase: str | None = None,
                 ssh_agent: bool = False,
                 connect_timeout_s: float = 10.0, connect_retries: int = 3,
                 backoff_s: float = 0.5, keepalive_s: float = 15.0,
                 io_timeout_s: float = 300.0) -> None:
        if not host or not isinstance(host, str):
            raise ConfigError(f"ssh host must be a non-empty string, got {host!r}")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ConfigError(f"ssh port for {host} must be 1..65535, got {port!r}")
        if not isinstance(connect_retries, int) or connect_retries < 1:
            raise ConfigError(f"ssh connect_retries for {host} must be >= 1, "
                              f"got {connect_retries!r}")
        self.host, self.port = host, port
        self.user = user or _current_user()
        self.key_file = Path(key_file).expanduser() if key_file else None
        self.known_hosts = (Path(known_hosts).expanduser() if known_hosts
                            else Path("~/.ssh/known_hosts").expanduser())
        self.insecure_accept_unknown_host_key = bool(insecure_accept_unknown_host_key)
        self._password = password
        self._passphrase = passphrase
        self.ssh_agent = bool(ssh_agent)
        self.connect_timeout_s = check_timeout(connect_timeout_s)
        self.connect_retries = connect_retries
        self.backoff_s = float(backoff_s)
        self.keepalive_s = float(keepalive_s)
        self.io_timeout_s = check_timeout(io_timeout_s)
        self._client: Any = None
        self._sftp: Any = None
        self._lock = threading.RLock()

    # --- identity ----------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """user@host:port, for messages and tables (never includes secrets)."""
        return f"{self.user}@{self.host}:{self.port}"

    def __repr__(self) -> str:
        key = str(self.key_file) if self.key_file else None
        return (f"SSHTransport({self.address}, key_file={key!r}, "
                f"known_hosts={str(self.known_hosts)!r})")

    # --- connection --------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the connection now (otherwise the first command does); idempotent."""
        self._connected_client()

    def _connected_client(self) -> Any:
        with self._lock:
            client = self._client
            if client is not None:
                transport = client.get_transport()
                if transport is not None and transport.is_active():
                    return client
                log.info("ssh %s: connection lost; reconnecting", self.address)
                self._drop()
            self._client = self._connect_with_retries()
            return self._client

    def _connect_with_retries(self) -> Any:
        import paramiko

        last: BaseException | None = None
        for attempt in range(self.connect_retries):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.info("ssh %s: connect attempt %d/%d in %.1f s (%s)", self.address,
                         attempt + 1, self.connect_retries, delay, last)
                time.sleep(delay)
            try:
                return self._connect_once()
            except _UnknownHostKey as exc:
                raise TransportError(
                    f"host key of {self.host}:{self.port} is unknown: {exc.host} is not in "
                    f"known_hosts file {self.known_hosts} (its {exc.key_type} key is "
                    f"{exc.fingerprint}); verify the key and add it (e.g. `ssh-keyscan -p "
                    f"{self.port} {self.host} >> {self.known_hosts}`), or pass "
                    "--insecure-accept-unknown-host-key to trust it unverified") from None
            except paramiko.BadHostKeyException as exc:
                raise TransportError(
                    f"host key of {self.host}:{self.port} does NOT match the one in known_hosts "
                    f"file {self.known_hosts} (got {_fingerprint(exc.key)}); refusing to connect "
                    "(a changed key can mean a man-in-the-middle attack)") from None
            except paramiko.AuthenticationException:
                key = f"key file {self.key_file}" if self.key_file else "no key file"
                raise TransportError(
                    f"authentication as {self.user} on {self.host}:{self.port} failed ({key}"
                    f"{', password given' if self._password else ''}"
                    f"{', ssh-agent keys offered' if self.ssh_agent else ''}); check that the "
                    "key is in the device's authorized_keys") from None
            except (paramiko.SSHException, OSError, EOFError) as exc:
                # Refused, unreachable, timed out, reset during the handshake: worth retrying.
                last = exc
        tries = f"{self.connect_retries} attempt{'s' if self.connect_retries != 1 else ''}"
        raise TransportError(f"cannot connect to {self.address} after {tries}: "
                             f"{type(last).__name__}: {_safe_text(last)}")

    def _connect_once(self) -> Any:
        import paramiko

        client = paramiko.SSHClient()
        if self.known_hosts.is_file():
            self._load_known_hosts(client)
        elif not self.insecure_accept_unknown_host_key:
            raise TransportError(f"known_hosts file {self.known_hosts} for {self.address} does "
                                 "not exist; host keys cannot be verified (create it, or pass "
                                 "--insecure-accept-unknown-host-key)")
        client.set_missing_host_key_policy(_Policy(self.insecure_accept_unknown_host_key))
        pkey = self._private_key()
        try:
            client.connect(
                self.host, port=self.port, username=self.user, pkey=pkey,
                password=self._password, timeout=self.connect_timeout_s,
                banner_timeout=self.connect_timeout_s, auth_timeout=self.connect_timeout_s,
                allow_agent=self.ssh_agent, look_for_keys=False)
        except BaseException:
            client.close()
            raise
        transport = client.get_transport()
        if transport is not None:
            # Small SSH packets (SFTP requests, channel closes) otherwise wait on Nagle's
            # algorithm and the peer's delayed ACK: about 40 ms per file push after a command.
            with contextlib.suppress(OSError, AttributeError):
                transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.keepalive_s > 0:
                transport.set_keepalive(max(1, int(self.keepalive_s)))
        log.debug("ssh %s: connected", self.address)
        return client

    def _load_known_hosts(self, client: Any) -> None:
        """Load the known_hosts file into `client`, refusing a malformed line by its number
        (paramiko would skip some silently and crash on others). Marker lines
        (@cert-authority, @revoked) and key types paramiko does not know are passed over."""
        import paramiko
        from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

        path = self.known_hosts
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise TransportError(f"cannot read known_hosts file {path}: {exc}") from None
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith(("#", "@")):
                continue
            problem = ""
            if len(line.split()) < 3:
                problem = "it needs a host pattern, a key type and a base64 key"
            else:
                try:
                    HostKeyEntry.from_line(line, number)
                except (InvalidHostKey, paramiko.SSHException, ValueError) as exc:
                    problem = f"its key does not decode: {_safe_text(exc)[:120]}"
            if problem:
                raise TransportError(f"known_hosts file {path} line {number} is malformed "
                                     f"({problem}): {line[:80]!r}; fix or delete that line")
        try:
            client.load_host_keys(str(path))
        except (OSError, paramiko.SSHException) as exc:
            raise TransportError(f"cannot read known_hosts file {path}: {exc}") from None

    def _private_key(self) -> Any:
        """The key file loaded (decrypted with the passphrase, or else the password), or None
        when there is none or it is left to the ssh-agent. A TransportError says whether the
        key is encrypted without a passphrase, the passphrase is wrong, or it is no key."""
        if self.key_file is None:
            return None
        if not self.key_file.is_file():
            raise TransportError(f"ssh key file {self.key_file} for {self.address} does not "
                                 "exist")
        secret = self._passphrase if self._passphrase is not None else self._password
        key, encrypted, errors = _load_key(self.key_file, secret)
        if key is not None:
            return key
        if encrypted and secret is None:
            if self.ssh_agent:
                return None  # the agent holds the decrypted key, if it was added there
            raise TransportError(
                f"ssh key file {self.key_file} for {self.address} is encrypted and no "
                "passphrase was given: set passphrase_env in the device's fleet entry to the "
                "name of an environment variable holding the passphrase, or add the key to an "
                f"ssh-agent (ssh-add {self.key_file}) and set ssh_agent = true")
        if secret is not None and _load_key(self.key_file, None)[1]:
            raise TransportError(f"ssh key file {self.key_file} for {self.address} could not be "
                                 "decrypted with the passphrase given (passphrase_env, or "
                                 "password_env when there is no passphrase)")
        raise TransportError(f"ssh key file {self.key_file} for {self.address} is not a private "
                             f"key latbench can read ({'; '.join(errors)})")

    def _drop(self) -> None:
        """Forget the connection (and its SFTP session) so the next call reconnects."""
        with self._lock:
            sftp, client = self._sftp, self._client
            self._sftp = self._client = None
        for thing in (sftp, client):
            if thing is not None:
                try:
                    thing.close()
                except (OSError, EOFError) as exc:  # closing a dead connection
                    log.debug("ssh %s: close: %s", self.address, exc)

    def close(self) -> None:
        self._drop()

    # --- commands ----------------------------------------------------------------------------
    def run(self, argv: Sequence[str], timeout_s: float,
            on_stderr: LineCallback | None = None) -> CommandResult:
        import paramiko

        args = check_argv(argv)
        timeout = check_timeout(timeout_s)
        start = time.perf_counter()
        deadline = start + timeout
        # A connection that looked alive may be stale (the host rebooted, sshd restarted):
        # then drop it and try once more on a fresh one, which has its own retries.
        for attempt in (1, 2):
            reused = self._client is not None
            client = self._connected_client()
            try:
                channel = client.get_transport().open_session(
                    timeout=min(timeout, self.connect_timeout_s))
                channel.exec_command(wrap_argv(args))
                break
            except (paramiko.SSHException, OSError, EOFError, AttributeError) as exc:
                self._drop()
                if attempt == 1 and reused:
                    log.info("ssh %s: stale connection (%s); reconnecting", self.address,
                             type(exc).__name__)
                    continue
                raise TransportError(f"cannot start {describe(args)} on {self.address}: "
                                     f"{type(exc).__name__}: {_safe_text(exc)}") from None
        out, err = bytearray(), LineFilter(command_lines(on_stderr))
        pid: tuple[int, int] | None = None
        try:
            while True:
                got = False
                while channel.recv_ready():
                    out += channel.recv(65536)
                    got = True
                while channel.recv_stderr_ready():
                    err.feed(channel.recv_stderr(65536))
                    got = True
                if pid is None and b"\n" in err.kept:
                    pid, _ = split_pid(decode(bytes(err.kept)))
                if (channel.exit_status_ready() and channel.eof_received
                        and not channel.recv_ready() and not channel.recv_stderr_ready()):
                    break
                if channel.closed and not channel.recv_ready() and \
                        not channel.recv_stderr_ready():
                    break
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    self._kill_after_timeout(channel, pid, args)
                    raise TransportError(
                        f"command {describe(args)} on {self.address} timed out after "
                        f"{timeout:g} s; " + (f"remote process group {pid[1]} was killed"
                                               if pid is not None else
                                               "its remote pid was unknown, so it may still run"))
                if not got:
                    select.select([channel], [], [], min(_POLL_S, remaining))
            transport = client.get_transport()
            if not channel.exit_status_ready():
                alive = transport is not None and transport.is_active()
                if not alive:
                    self._drop()
                raise TransportError(
                    f"connection to {self.address} was lost while running {describe(args)}"
                    if not alive else
                    f"{describe(args)} on {self.address} ended without an exit status")
            code = channel.recv_exit_status()
            if code == -1 and (not channel.eof_received or transport is None
                               or not transport.is_active()):
                # No status and no EOF: the connection died under the running command (a
                # command killed by a signal still gets an EOF from a live sshd).
                self._drop()
                raise TransportError(f"connection to {self.address} was lost while running "
                                     f"{describe(args)}")
        finally:
            channel.close()
        duration = time.perf_counter() - start
        _, stderr = split_pid(decode(err.finish()))
        # code -1 on a live connection: the command died from a signal (sshd sends no status)
        log.debug("ssh %s: %s -> %d in %.3f s", self.address, describe(args), code, duration)
        return CommandResult(args, code, decode(bytes(out)), stderr, duration)

    def _kill_after_timeout(self, channel: Any, pid: tuple[int, int] | None,
                            args: tuple[str, ...]) -> None:
        """Close the timed-out channel and kill its process group through a fresh channel."""
        import paramiko

        try:
            channel.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        if pid is None:
            log.warning("ssh %s: %s timed out before reporting its pid; cannot kill it",
                        self.address, describe(args))
            return
        try:
            result = self.run(kill_argv(pid), KILL_TIMEOUT_S)
            log.info("ssh %s: killed timed-out process (pid, group) %s (exit %d)",
                     self.address, pid, result.returncode)
        except TransportError as exc:
            log.warning("ssh %s: could not kill timed-out process group %s: %s", self.address,
                        pid, exc)

    # --- files -------------------------------------------------------------------------------
    def _sftp_client(self) -> Any:
        import paramiko

        with self._lock:
            client = self._connected_client()
            if self._sftp is None:
                try:
                    self._sftp = client.open_sftp()
                except (OSError, EOFError, paramiko.SSHException) as exc:
                    self._drop()
                    raise TransportError(f"cannot open SFTP on {self.address}: "
                                         f"{type(exc).__name__}: {_safe_text(exc)}") from None
                self._sftp.get_channel().settimeout(self.io_timeout_s)
            return self._sftp

    def _mkdirs(self, sftp: Any, folder: str) -> None:
        parts = [p for p in folder.split("/") if p]
        path = ""
        for part in parts:
            path += "/" + part
            try:
                attrs = sftp.stat(path)
            except FileNotFoundError:
                try:
                    sftp.mkdir(path)
                except OSError:
                    if not stat.S_ISDIR(sftp.stat(path).st_mode):  # lost a race: fine if a dir
                        raise
                continue
            if not stat.S_ISDIR(attrs.st_mode or 0):
                raise TransportError(f"push on {self.address}: {path} exists and is not a "
                                     "directory")

    def push(self, local: Path, remote: str) -> None:
        import paramiko

        local = Path(local)
        remote = check_remote_path(remote)
        if not local.is_file():
            raise TransportError(f"push to {self.address}: source {local} is not a file")
        sftp = self._sftp_client()
        try:
            self._mkdirs(sftp, posixpath.dirname(remote))
            sftp.put(str(local), remote)
        except TransportError:
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._drop()
            raise TransportError(f"push to {self.address}: copying {local} to {remote} failed: "
                                 f"{type(exc).__name__}: {_safe_text(exc)}") from None

    def pull(self, remote: str, local: Path) -> None:
        import paramiko

        local = Path(local)
        remote = check_remote_path(remote)
        sftp = self._sftp_client()
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            sftp.get(remote, str(local))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if isinstance(exc, FileNotFoundError):
                raise TransportError(f"pull from {self.address}: {remote} does not exist") \
                    from None
            self._drop()
            raise TransportError(f"pull from {self.address}: copying {remote} to {local} "
                                 f"failed: {type(exc).__name__}: {_safe_text(exc)}") from None


def _load_key(path: Path, secret: str | None) -> tuple[Any, bool, list[str]]:
    """(key or None, whether the file is encrypted and needs a secret, why each key type
    failed). Each key type paramiko has is tried in turn: there is no one loader that reports
    an encrypted file as such."""
    import paramiko

    encrypted, errors = False, []
    for name in ("Ed25519Key", "ECDSAKey", "RSAKey", "DSSKey"):
        key_class = getattr(paramiko, name, None)
        if key_class is None:
            continue
        try:
            return key_class.from_private_key_file(str(path), password=secret), False, []
        except paramiko.PasswordRequiredException:
            encrypted = True
        except (paramiko.SSHException, ValueError, TypeError) as exc:
            errors.append(f"{name}: {_safe_text(exc)[:80]}")
        except OSError as exc:
            raise TransportError(f"cannot read ssh key file {path}: {exc}") from None
    return None, encrypted, errors


class _Policy:
    """Unknown host keys: refuse (default) or accept in memory only, with a logged warning."""

    def __init__(self, accept: bool) -> None:
        self.accept = accept

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        fingerprint = _fingerprint(key)
        if not self.accept:
            raise _UnknownHostKey(hostname, key.get_name(), fingerprint)
        log.warning("accepting the UNVERIFIED %s host key %s of %s "
                    "(--insecure-accept-unknown-host-key)", key.get_name(), fingerprint,
                    hostname)
        client.get_host_keys().add(hostname, key.get_name(), key)


def _current_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "root"


def _safe_text(exc: BaseException | None) -> str:
    """An exception's text, short; paramiko's messages never carry secrets, but cap them."""
    if exc is None:
        return "no error recorded"
    if isinstance(exc, socket.timeout):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
