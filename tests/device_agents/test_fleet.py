"""Fleet inventories (TOML -> Device records, errors naming device and field), health checks
over real sshd hosts and the stand-in phone, and `latbench devices check`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from standins.sshd_host import encrypted_copy

import latbench.bench.runners  # noqa: F401  (registers the runtimes fleets are checked against)
from latbench import cli
from latbench.device_agents import (
    CHECK_HEADER,
    ADBTransport,
    DeviceCheck,
    LocalTransport,
    SSHTransport,
    check_devices,
    check_row,
    load_fleet,
    parse_fleet,
)
from latbench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def ssh_table(host, key: Path, known_hosts: Path, **extra) -> str:
    lines = ['transport = "ssh"', 'host = "127.0.0.1"', f"port = {host.port}",
             f'key_file = "{key}"', f'known_hosts = "{known_hosts}"',
             f'work_dir = "{host.work_dir}"', f'python = "{sys.executable}"',
             "connect_retries = 1"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines)


def test_example_inventory_parses(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    shutil.copy(ROOT / "examples" / "fleet.toml", fleet)
    for tool in ("android_aarch64_benchmark_model", "android_aarch64_onnxruntime_perf_test"):
        (tmp_path / "tools").mkdir(exist_ok=True)
        (tmp_path / "tools" / tool).write_bytes(b"\x7fELF stand-in")
    devices = {d.name: d for d in load_fleet(fleet)}
    assert list(devices) == ["rpi4", "jetson", "pixel7", "tablet", "host"]
    rpi, jetson, pixel = devices["rpi4"], devices["jetson"], devices["pixel7"]
    assert isinstance(rpi.transport, SSHTransport) and rpi.transport.user == "pi"
    assert rpi.runtimes == ("onnxruntime", "litert") and rpi.cpu_affinity == (3,)
    assert rpi.transport.known_hosts == Path("~/.ssh/known_hosts").expanduser()
    assert not rpi.transport.insecure_accept_unknown_host_key
    assert (jetson.transport.port, jetson.threads, jetson.python) == (2222, 4,
                                                                      "/opt/venv/bin/python")
    assert isinstance(pixel.transport, ADBTransport) and pixel.python is None
    assert pixel.tools["benchmark_model"] == str(tmp_path / "tools" /
                                                 "android_aarch64_benchmark_model")
    assert pixel.tool_args["benchmark_model"] == ("--enable_op_profiling=true",)
    assert pixel.work_dir == "/data/local/tmp/latbench" and pixel.cpu_affinity == (4, 5, 6, 7)
    assert devices["tablet"].work_dir == "/data/local/tmp/latbench"  # the adb default
    assert isinstance(devices["host"].transport, LocalTransport)
    # The CLI flag turns on the insecure host-key policy for every SSH device, explicitly.
    flagged = load_fleet(fleet, insecure_accept_unknown_host_key=True, only=["rpi4"])
    assert [d.name for d in flagged] == ["rpi4"]
    assert flagged[0].transport.insecure_accept_unknown_host_key
    with pytest.raises(ConfigError, match="no device"):
        load_fleet(fleet, only=["nope"])


GOOD = {"transport": "ssh", "host": "h", "user": "u"}


@pytest.mark.parametrize("table, match", [
    ({"transport": "telnet", "host": "h"}, "device 'd': field 'transport' must be one of"),
    ({"transport": "ssh"}, "device 'd': field 'host' is required"),
    ({**GOOD, "port": 70000}, "device 'd': field 'port' must be an integer in 1..65535"),
    ({**GOOD, "hots": "typo"}, r"device 'd': unknown field\(s\) \['hots'\]"),
    ({**GOOD, "serial": "x"}, r"unknown field\(s\) \['serial'\] for a ssh device"),
    ({**GOOD, "threads": 0}, "device 'd': field 'threads' must be an integer >= 1"),
    ({**GOOD, "cpu_affinity": [-1]}, "device 'd': field 'cpu_affinity'"),
    ({**GOOD, "work_dir": "relative/dir"}, "device 'd': field 'work_dir'.*not absolute"),
    ({**GOOD, "runtimes": ["tvm"]}, r"field 'runtimes': unknown runtime\(s\) \['tvm'\]"),
    ({**GOOD, "runtimes": ["tflite-benchmark-model"]}, "needs field 'benchmark_model'"),
    ({**GOOD, "benchmark_model": "missing/bin"}, "field 'benchmark_model': binary .* not exist"),
    ({**GOOD, "password_env": "LATBENCH_TEST_UNSET"}, "LATBENCH_TEST_UNSET is not set"),
    ({**GOOD, "insecure_accept_unknown_host_key": "yes"}, "must be true or false"),
    ({"transport": "adb", "serial": "x", "runtimes": ["onnxruntime"]},
     "runtimes onnxruntime run through the Python agent, but the device has no python"),
    ({**GOOD, "benchmark_model_args": ["enable_op_profiling"]}, "must be strings starting"),
])
def test_inventory_errors_name_device_and_field(table: dict, match: str,
                                                tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_fleet({"devices": {"d": table}}, base_dir=tmp_path, source="f.toml", env={})
    assert "fleet f.toml" in str(info.value)


def test_inventory_structure_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no devices"):
        parse_fleet({}, source="f.toml")
    with pytest.raises(ConfigError, match=r"unknown top-level table\(s\) \['device'\]"):
        parse_fleet({"device": {"d": GOOD}}, source="f.toml")
    with pytest.raises(ConfigError, match=r"\[defaults\]: unknown field\(s\) \['colour'\]"):
        parse_fleet({"defaults": {"colour": 1}, "devices": {"d": GOOD}}, source="f.toml")
    with pytest.raises(ConfigError, match="device names may hold only"):
        parse_fleet({"devices": {"a b": GOOD}}, source="f.toml")
    (tmp_path / "bad.toml").write_text("[devices.x\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_fleet(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_fleet(tmp_path / "absent.toml")


def test_password_comes_from_the_environment_and_stays_out_of_repr(tmp_path: Path) -> None:
    secret = "s3cret-pass"
    (device,) = parse_fleet({"devices": {"d": {**GOOD, "password_env": "PW"}}},
                            env={"PW": secret})
    assert secret not in repr(device) and secret not in repr(device.transport)
    assert device.transport._password == secret


def test_check_devices_keeps_each_hosts_result(sshd_hosts, client_key, known_hosts,
                                               adb_server, standin_phone, tmp_path: Path,
                                               capsys) -> None:
    a, b, dead = sshd_hosts("a"), sshd_hosts("b"), sshd_hosts("dead")
    kh = known_hosts(a, b, dead)
    dead.kill()
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f"[devices.a]\n{ssh_table(a, client_key, kh)}\n"
        f"[devices.b]\n{ssh_table(b, client_key, kh)}\n"
        f"[devices.dead]\n{ssh_table(dead, client_key, kh)}\n"
        f'[devices.phone]\ntransport = "adb"\nserial = "{standin_phone.serial}"\n'
        f"adb_server_port = {adb_server.port}\n"
        f'work_dir = "{tmp_path / "phone"}"\n')
    devices = load_fleet(fleet)
    checks = check_devices(devices, timeout_s=60)
    assert [c.device for c in checks] == ["a", "b", "dead", "phone"]
    by = {c.device: c for c in checks}
    assert by["a"].reachable and by["b"].reachable and by["phone"].reachable
    assert not by["dead"].reachable and "cannot connect" in by["dead"].error
    for name in ("a", "b"):
        facts = by[name].facts
        assert facts["source"] == "agent" and facts["cores"] >= 1 and facts["cpu_model"]
        assert facts["free_bytes"] > 0 and facts["os"] == "Linux"
    phone = by["phone"].facts  # no python on a phone: facts come from the shell
    assert phone["source"] == "shell" and phone["cores"] >= 1 and phone["free_bytes"] > 0
    assert check_row(by["dead"])[2] == "NO" and check_row(by["a"])[2] == "yes"
    assert list(Path(a.work_dir).iterdir()) == []  # the facts agent cleaned up after itself

    # The CLI: a table, and exit 1 because one device is unreachable; 0 without it.
    assert cli.main(["devices", "check", "--fleet", str(fleet)]) == 1
    out = capsys.readouterr()
    assert "dead" in out.out and "unreachable: dead" in out.err
    assert cli.main(["devices", "check", "--fleet", str(fleet), "--only", "a,phone",
                     "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert [r["device"] for r in reply] == ["a", "phone"] and all(r["reachable"] for r in reply)


def test_unknown_host_key_in_a_fleet_needs_the_explicit_flag(sshd_hosts, client_key,
                                                              known_hosts, tmp_path: Path) -> None:
    known, stranger = sshd_hosts("known"), sshd_hosts("stranger")
    kh = known_hosts(known)  # the stranger's host key was never recorded
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f"[devices.known]\n{ssh_table(known, client_key, kh)}\n"
                     f"[devices.stranger]\n{ssh_table(stranger, client_key, kh)}\n")
    checks = {c.device: c for c in check_devices(load_fleet(fleet))}
    assert checks["known"].reachable and not checks["stranger"].reachable
    assert "host key of 127.0.0.1" in checks["stranger"].error
    assert "--insecure-accept-unknown-host-key" in checks["stranger"].error
    trusting = check_devices(load_fleet(fleet, insecure_accept_unknown_host_key=True,
                                        only=["stranger"]))
    assert trusting[0].reachable
    assert kh.read_text() == known.known_hosts_line()  # nothing was added to known_hosts


def test_passphrase_comes_from_the_environment(tmp_path: Path) -> None:
    (device,) = parse_fleet({"devices": {"d": {**GOOD, "passphrase_env": "PP",
                                               "ssh_agent": True}}}, env={"PP": "open sesame"})
    assert device.transport._passphrase == "open sesame" and device.transport.ssh_agent
    assert "open sesame" not in repr(device.transport)
    with pytest.raises(ConfigError, match="device 'd': field 'passphrase_env': environment "
                                          "variable PP is not set"):
        parse_fleet({"devices": {"d": {**GOOD, "passphrase_env": "PP"}}}, source="f.toml",
                    env={})


def test_check_row_names_the_cpus_dot_product_and_matrix_units() -> None:
    facts = {"cpu_model": "Xeon", "cpu_features": ["avx2", "fma", "avx512f", "avx512_vnni",
                                                   "amx_tile", "amx_int8", "amx_bf16"]}
    row = check_row(DeviceCheck("d", "u@h:22", True, facts=facts))
    assert row[CHECK_HEADER.index("CPU")] == "Xeon (avx512_vnni, amx_int8)"
    plain = check_row(DeviceCheck("d", "u@h:22", True, facts={"cpu_model": "Cortex-A53",
                                                              "cpu_features": ["asimd"]}))
    assert plain[CHECK_HEADER.index("CPU")] == "Cortex-A53"


def test_check_row_keeps_the_whole_error() -> None:
    error = "TransportError: " + "a long and specific cause " * 20 + "THE END"
    row = check_row(DeviceCheck("d", "u@h:22", False, error=error))
    assert row[-1] == error


def test_cli_names_a_malformed_known_hosts_line_and_an_encrypted_key(
        sshd_hosts, client_key, known_hosts, tmp_path: Path, capfd) -> None:
    host = sshd_hosts("a")
    kh = known_hosts(host)
    broken = tmp_path / "broken_known_hosts"
    broken.write_text(kh.read_text() + "127.0.0.1 ssh-ed25519\n")
    locked = encrypted_copy(client_key, tmp_path / "locked" / "id_ed25519", "s3cret")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f"[devices.broken]\n{ssh_table(host, client_key, broken)}\n"
                     f"[devices.locked]\n{ssh_table(host, locked, kh)}\n"
                     f"[devices.unlocked]\n"
                     f"{ssh_table(host, locked, kh, passphrase_env='LATBENCH_TEST_PP')}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LATBENCH_TEST_PP", "s3cret")
        code = cli.main(["devices", "check", "--fleet", str(fleet), "--json"])
    out, err = capfd.readouterr()
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == ["latbench: 2 of 3 devices unreachable: broken, locked"]
    by = {r["device"]: r for r in json.loads(out)}
    assert f"known_hosts file {broken} line 2 is malformed" in by["broken"]["error"]
    assert "is encrypted and no passphrase was given" in by["locked"]["error"]
    assert "passphrase_env" in by["locked"]["error"] and by["unlocked"]["reachable"]


def test_devices_check_reads_the_fleet_from_the_environment(tmp_path: Path, capsys,
                                                            monkeypatch) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[devices.here]\ntransport = "local"\nruntimes = ["onnxruntime"]\n'
                     f'work_dir = "{tmp_path / "here"}"\n')
    monkeypatch.setenv("LATBENCH_FLEET", str(fleet))
    assert cli.main(["devices", "check", "--json"]) == 0
    (check,) = json.loads(capsys.readouterr().out)
    assert check["device"] == "here" and check["reachable"] and check["problems"] == []
    assert cli.main(["devices", "check"]) == 0
    assert f"fleet {fleet}" in capsys.readouterr().out
