"""Stand-ins for real devices, used by tests and benchmarks: real OpenSSH servers on loopback
(sshd_host), a fake Android device speaking the ADB protocol to the real adb server
(adb_standin_device) and a fake `benchmark_model` binary (benchmark_model_standin). Each is
named "stand-in" so nobody mistakes its output for a real device's."""
