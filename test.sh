#!/usr/bin/env bash
# Sluice's test command: installs what the tests need on a Debian machine, then runs the whole
# suite, including the tests a plain `cargo test` ignores because they need a system tool, root
# or time. Such a test that still lacks what it needs fails; none is skipped silently.
#
#   ./test.sh                          # everything
#   ./test.sh -p sluice-tests --test e2e_serial   # extra arguments go to `cargo test`
#
# Needs root (or sudo) to install packages and for the network-namespace and tmpfs tests.
set -euo pipefail
cd "$(dirname "$0")"

# command:package for every system tool a test runs.
tools=(
  socat:socat age:age minisign:minisign qemu-system-arm:qemu-system-arm
  iptables:iptables ip:iproute2 unshare:util-linux setpriv:util-linux
  arm-none-eabi-size:binutils-arm-none-eabi /usr/bin/python3:python3
  systemd-analyze:systemd clamscan:clamav fincore:util-linux-extra curl:curl
)

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "test.sh: installing packages needs root or sudo: $*" >&2; exit 1
  fi
}

missing=()
for t in "${tools[@]}"; do
  command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  # Sorted and unique: several tools may come from one package.
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "test.sh: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# A real S3 server for the object-store tests: Garage, built from crates.io once (several
# minutes; AGPL, run as a separate test server, never linked into Sluice).
if ! command -v garage >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/garage" ]; then
  echo "test.sh: installing garage 2.5.0, a test S3 server (several minutes, once)" >&2
  cargo install garage --version 2.5.0 --locked --no-default-features \
    --features bundled-libs,lmdb --quiet
fi

# The model formats' own Python writers and the model-signing reference tool, for the gate's
# interop tests (inspect/tests/interop.rs), in a virtual environment of their own, pinned.
pyenv=target/pyenv
if [ ! -x "$pyenv/bin/python3" ] || ! "$pyenv/bin/python3" -c 'import gguf, onnx, model_signing' 2>/dev/null; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  echo "test.sh: installing gguf, onnx and model-signing (PyPI) into $pyenv" >&2
  python3 -m venv "$pyenv"
  "$pyenv/bin/pip" install --quiet --disable-pip-version-check \
    gguf==0.19.0 onnx==1.23.2 numpy==2.4.6 model-signing==1.1.1 pyopenssl==26.4.0
fi
export SLUICE_TEST_PYTHON="$PWD/$pyenv/bin/python3"

# The firmware board image (QEMU tests) and the no_std protocol build.
have=$(rustup target list --installed)
for target in thumbv7m-none-eabi thumbv7em-none-eabihf; do
  grep -qx "$target" <<<"$have" || rustup target add "$target" >/dev/null
done

# --no-fail-fast: one failing test binary must not hide the results of the others.
[ $# -gt 0 ] || set -- --workspace
exec cargo test --locked --no-fail-fast "$@" -- --include-ignored
