#!/usr/bin/env bash
# Builds the protocol-break image for the MPS2 AN385 board (Cortex-M3, runs in QEMU) and prints
# its flash/RAM use. SLUICE_LINK_KEY_HEX=<64 hex digits of link.key> provisions the MAC check.
set -euo pipefail
cd "$(dirname "$0")/board"
rustup target add thumbv7m-none-eabi >/dev/null 2>&1 || true
# Its own target directory, whatever CARGO_TARGET_DIR says: the QEMU tests look for the image here.
cargo build --release --locked --target-dir target
image=target/thumbv7m-none-eabi/release/sluice-relay-board
if command -v arm-none-eabi-size >/dev/null 2>&1; then
  arm-none-eabi-size "$image"
else
  ls -l "$image"
fi
