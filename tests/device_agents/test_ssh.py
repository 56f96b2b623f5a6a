"""SSHTransport against real OpenSSH servers on loopback: quoting, exit codes, files, timeouts
that kill the remote process group, host-key policy, authentication, retries and reconnects."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest
from standins.procs import HANDSHAKE, TRICKY, handshake, wait_gone
from standins.sshd_host import SshAgent, encrypted_copy, keygen

from latbench.device_agents import SSHTransport, Transport, get_transport_class
from latbench.device_agents.remote import kill_argv, split_pid, wrap_argv
from latbench.errors import TransportError


def transport(host, key: Path, known_hosts: Path, **kw) -> SSHTransport:
    kw.setdefault("backoff_s", 0.05)
    return SSHTransport("127.0.0.1", port=host.port, key_file=key, known_hosts=known_hosts, **kw)


def test_remote_wrapper_helpers_quote_and_parse() -> None:
    command = wrap_argv(["echo", "it's"])
    assert command.startswith("sh -c ") and "'it'\"'\"'s'" in command
    assert split_pid("latbench-pid 42 40\nreal stderr\n") == ((42, 40), "real stderr\n")
    assert split_pid("latbench-pid 42 \nx") == ((42, 42), "x")  # no /proc: group = pid
    assert split_pid("no marker\n") == (None, "no marker\n")
    assert split_pid("rc noise\nlatbench-pid 9 8\nerr\n") == ((9, 8), "rc noise\nerr\n")
    assert split_pid("latbench-pid 1 1\n")[0] is None  # never kill init
    argv = kill_argv((42, 40))
    assert argv[-2:] == ["42", "40"] and argv[0] == "sh"


def test_run_passes_argv_verbatim_with_exit_code_and_stderr(sshd_hosts, client_key,
                                                            known_hosts) -> None:
    host = sshd_hosts("a")
    with transport(host, client_key, known_hosts(host)) as t:
        assert isinstance(t, Transport) and get_transport_class("ssh") is SSHTransport
        echo = t.run(["python3", "-c", "import json, sys; print(json.dumps(sys.argv[1:]))",
                      *TRICKY], timeout_s=30)
        assert echo.ok and echo.stdout.strip() == json.dumps(TRICKY)
        failed = t.run(["sh", "-c", "echo out; echo err >&2; exit 7"], timeout_s=30)
        assert (failed.returncode, failed.stdout, failed.stderr) == (7, "out\n", "err\n")
        assert "latbench-pid" not in failed.stderr
        missing = t.run(["/no/such/binary"], timeout_s=30)
        assert missing.returncode == 127 and "/no/such/binary" in missing.stderr


def test_push_and_pull_round_trip_and_create_parents(sshd_hosts, client_key, known_hosts,
                                                     tmp_path: Path) -> None:
    host = sshd_hosts("a")
    data = os.urandom(300_000)
    (tmp_path / "blob").write_bytes(data)
    remote = str(host.work_dir / "deep" / "er" / "blob")
    with transport(host, client_key, known_hosts(host)) as t:
        t.push(tmp_path / "blob", remote)
        assert Path(remote).read_bytes() == data
        t.pull(remote, tmp_path / "back" / "blob")
        assert (tmp_path / "back" / "blob").read_bytes() == data
        with pytest.raises(TransportError, match="does not exist"):
            t.pull(str(host.work_dir / "nope"), tmp_path / "nope")
        with pytest.raises(TransportError, match="not absolute"):
            t.push(tmp_path / "blob", "relative/path")


def test_timeout_kills_the_remote_process_group(sshd_hosts, client_key, known_hosts) -> None:
    host = sshd_hosts("a")
    marker = "313.1337"
    with transport(host, client_key, known_hosts(host)) as t:
        started = time.monotonic()
        with pytest.raises(TransportError, match=r"timed out after 1\.5 s; remote process group"):
            t.run(["sh", "-c", f"sleep {marker} & sleep {marker}; echo never"], timeout_s=1.5)
        assert time.monotonic() - started >= 1.5
        assert wait_gone(marker) == []  # the background child too, not just the leader
        assert t.run(["echo", "still usable"], 30).stdout == "still usable\n"


def test_unknown_host_key_is_refused_unless_explicitly_accepted(sshd_hosts, client_key,
                                                                 known_hosts) -> None:
    host, other = sshd_hosts("a"), sshd_hosts("b")
    kh = known_hosts(other)  # lists another host only
    before = kh.read_text()
    with pytest.raises(TransportError, match="unknown") as info:
        transport(host, client_key, kh).run(["true"], 30)
    message = str(info.value)
    assert "--insecure-accept-unknown-host-key" in message and "SHA256:" in message
    with transport(host, client_key, kh, insecure_accept_unknown_host_key=True) as t:
        assert t.run(["echo", "ok"], 30).stdout == "ok\n"
    assert kh.read_text() == before  # accepting is for this session only, nothing is written


def test_changed_host_key_is_refused_even_with_the_flag(sshd_hosts, client_key,
                                                        tmp_path: Path) -> None:
    host, other = sshd_hosts("a"), sshd_hosts("b")
    forged = tmp_path / "forged_known_hosts"  # host a's address with host b's key
    key_type, key = other.known_hosts_line().split()[1:3]
    forged.write_text(f"[127.0.0.1]:{host.port} {key_type} {key}\n")
    for insecure in (False, True):
        with pytest.raises(TransportError, match="does NOT match"):
            transport(host, client_key, forged,
                      insecure_accept_unknown_host_key=insecure).run(["true"], 30)


def test_missing_known_hosts_file_is_an_error(sshd_hosts, client_key, tmp_path: Path) -> None:
    host = sshd_hosts("a")
    with pytest.raises(TransportError, match="known_hosts file .* does not exist"):
        transport(host, client_key, tmp_path / "absent").run(["true"], 30)


def test_wrong_key_fails_at_once_and_never_shows_secrets(sshd_hosts, client_key, known_hosts,
                                                         tmp_path: Path, caplog) -> None:
    host = sshd_hosts("a")
    stranger = keygen(tmp_path / "stranger" / "id_ed25519")
    secret = "hunter2-not-for-logs"
    caplog.set_level(logging.DEBUG)
    t = transport(host, stranger, known_hosts(host), password=secret)
    with pytest.raises(TransportError, match="authentication as .* failed") as info:
        t.run(["true"], 30)
    assert secret not in str(info.value) and secret not in repr(t)
    assert secret not in caplog.text
    assert "connect attempt" not in caplog.text  # authentication failures are not retried
    assert stranger.read_text().splitlines()[1] not in caplog.text + str(info.value)


def test_dead_host_is_retried_with_backoff_and_reconnected_when_back(sshd_hosts, client_key,
                                                                     known_hosts, caplog) -> None:
    host = sshd_hosts("a")
    caplog.set_level(logging.INFO, logger="latbench.device_agents.ssh")
    t = transport(host, client_key, known_hosts(host), connect_retries=3, backoff_s=0.2)
    assert t.run(["true"], 30).ok
    host.kill()
    started = time.monotonic()
    with pytest.raises(TransportError, match="after 3 attempts"):
        t.run(["true"], 30)
    assert time.monotonic() - started >= 0.2 + 0.4  # back-off doubles: 0.2 s, then 0.4 s
    assert "attempt 2/3 in 0.2 s" in caplog.text and "attempt 3/3 in 0.4 s" in caplog.text
    host.start()
    assert t.run(["echo", "back"], 30).stdout == "back\n"
    t.close()


def test_host_dying_mid_command_is_a_transport_error(sshd_hosts, client_key,
                                                     known_hosts) -> None:
    host = sshd_hosts("a")
    t = transport(host, client_key, known_hosts(host), connect_retries=1)
    t.connect()
    killer = threading.Timer(1.0, host.kill)
    killer.start()
    try:
        with pytest.raises(TransportError, match="lost|without an exit status"):
            t.run(["sleep", "271.828"], timeout_s=60)
    finally:
        killer.join()
    assert wait_gone("271.828") == []
    t.close()


def test_stderr_lines_stream_to_a_callback_while_the_command_runs(sshd_hosts, client_key,
                                                                  known_hosts,
                                                                  tmp_path: Path) -> None:
    host = sshd_hosts("a")
    seen, on_line = handshake(tmp_path / "flag")
    with transport(host, client_key, known_hosts(host)) as t:
        result = t.run(["sh", "-c", HANDSHAKE, "sh", str(tmp_path / "flag")], 60,
                       on_stderr=on_line)
        assert (result.returncode, result.stdout) == (0, "out\n")
        assert result.stderr == "keep-1\nkeep-2\n"  # no ping, no wrapper pid line
        assert seen == ["keep-1", "latbench-test ping", "keep-2"]  # not the wrapper's pid line
        # The timeout still kills the remote group while lines are being streamed.
        marker = "373.737"
        lines: list[str] = []
        with pytest.raises(TransportError, match="timed out after 1.5 s; remote process group"):
            t.run(["sh", "-c", f"echo started >&2; sleep {marker}"], 1.5,
                  on_stderr=lambda line: lines.append(line) or False)
        assert "started" in lines and wait_gone(marker) == []


@pytest.mark.parametrize("bad_line, problem", [
    ("127.0.0.1 ssh-ed25519", "needs a host pattern, a key type and a base64 key"),
    ("127.0.0.1 ssh-ed25519 AAAAC3Nza=C1", "does not decode"),
    ("127.0.0.1 ssh-ed25519 !!!!", "does not decode"),
])
def test_malformed_known_hosts_line_is_named(sshd_hosts, client_key, known_hosts,
                                             bad_line: str, problem: str) -> None:
    host = sshd_hosts("a")
    kh = known_hosts(host)
    kh.write_text(f"# a comment\n{kh.read_text()}\n{bad_line}\n@revoked * ssh-rsa AAAA\n")
    with pytest.raises(TransportError, match=rf"known_hosts file {kh} line 4 is malformed "
                                             rf"\(.*{problem}.*fix or delete that line"):
        transport(host, client_key, kh).run(["true"], 30)


def test_encrypted_key_needs_a_passphrase_and_says_how_to_give_one(
        sshd_hosts, client_key, known_hosts, tmp_path: Path, caplog) -> None:
    host = sshd_hosts("a")
    kh = known_hosts(host)
    secret = "correct horse battery"
    locked = encrypted_copy(client_key, tmp_path / "locked" / "id_ed25519", secret)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TransportError, match="is encrypted and no passphrase was given: set "
                                             "passphrase_env .* ssh-agent") as info:
        transport(host, locked, kh).run(["true"], 30)
    assert "authorized_keys" not in str(info.value)
    with pytest.raises(TransportError, match="could not be decrypted with the passphrase"):
        transport(host, locked, kh, passphrase="wrong").run(["true"], 30)
    with transport(host, locked, kh, passphrase=secret) as t:
        assert t.run(["echo", "unlocked"], 30).stdout == "unlocked\n"
    assert secret not in caplog.text and secret not in repr(t)
    garbage = tmp_path / "not-a-key"
    garbage.write_text("hello\n")
    with pytest.raises(TransportError, match="is not a private key latbench can read"):
        transport(host, garbage, kh).run(["true"], 30)


def test_encrypted_key_held_by_an_ssh_agent(sshd_hosts, client_key, known_hosts,
                                            tmp_path: Path, monkeypatch) -> None:
    host = sshd_hosts("a")
    kh = known_hosts(host)
    locked = encrypted_copy(client_key, tmp_path / "locked" / "id_ed25519", "agent-held")
    agent = SshAgent(tmp_path / "agent")
    try:
        agent.add(locked, "agent-held")
        monkeypatch.setenv("SSH_AUTH_SOCK", str(agent.socket))
        with transport(host, locked, kh, ssh_agent=True) as t:
            assert t.run(["echo", "via agent"], 30).stdout == "via agent\n"
        with pytest.raises(TransportError, match="encrypted and no passphrase"):
            transport(host, locked, kh).run(["true"], 30)  # agent not enabled for it
    finally:
        agent.stop()
