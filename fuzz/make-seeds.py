#!/usr/bin/env python3
"""Writes fuzz seed corpora from the golden vectors printed in protocol/SPEC.md.

parse_frame gets each frame as is; cobs_accumulator and firmware_relay get them COBS-encoded
back to back with a delimiter after each, the way a serial line carries them.
"""
import pathlib
import re

root = pathlib.Path(__file__).resolve().parent
spec = (root.parent / "protocol" / "SPEC.md").read_text()
# The vectors of the current version (magic "SL", then the version byte).
frames = [bytes.fromhex(h) for h in re.findall(r"^(534c03[0-9a-f]+)$", spec, re.M)]
assert frames, "no golden vectors found in SPEC.md"


def cobs(data: bytes) -> bytes:
    out, block = bytearray(), bytearray()
    for b in data:
        if b == 0:
            out += bytes([len(block) + 1]) + block
            block.clear()
        else:
            block.append(b)
            if len(block) == 254:
                out += b"\xff" + block
                block.clear()
    out += bytes([len(block) + 1]) + block
    return bytes(out)


for name in ("parse_frame", "cobs_accumulator", "firmware_relay"):
    (root / "seeds" / name).mkdir(parents=True, exist_ok=True)
for i, f in enumerate(frames):
    (root / "seeds" / "parse_frame" / f"golden-{i}").write_bytes(f)
line = b"".join(cobs(f) + b"\x00" for f in frames)
for name in ("cobs_accumulator", "firmware_relay"):
    (root / "seeds" / name / "golden-line").write_bytes(line)
print(f"{len(frames)} golden frames written")
