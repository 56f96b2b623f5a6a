#!/usr/bin/env bash
# System packages latbench's device tests need: OpenSSH server (+ ssh-keygen) for the loopback
# SSH fleet and the Android `adb` client/server for the stand-in phone. Idempotent: installs
# only what is missing, and only as root with apt-get; otherwise it says what is missing (the
# tests then fail with the same hint rather than being skipped). Prints what it did.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

missing=()
have sshd || missing+=(openssh-server)
have ssh-keygen || missing+=(openssh-client)
have adb || missing+=(adb)

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-test-deps: nothing to do (sshd, ssh-keygen and adb are installed)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-deps: missing ${missing[*]}; install them (as root: apt-get install" \
       "${missing[*]}) or the device tests will fail" >&2
  exit 0
fi
echo "install-test-deps: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || echo "install-test-deps: apt-get update failed; trying the cached lists" >&2
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
  echo "install-test-deps: apt-get install ${missing[*]} failed; the device tests need them" >&2
  exit 1
fi
# sshd's privilege-separation directory (normally made by its init script, which we never run).
mkdir -p /run/sshd
echo "install-test-deps: installed ${missing[*]}"
