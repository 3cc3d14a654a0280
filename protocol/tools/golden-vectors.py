#!/usr/bin/env python3
"""The golden vectors of SPEC.md section 12, computed from the fields by an implementation
independent of the `sluice-protocol` crate: hand-written varints, RFC 8452 POLYVAL (checked
against the RFC's Appendix A vector), AES-256 from `cryptography`, a bitwise CRC-32C.

    protocol/tools/golden-vectors.py [VERSION]    # prints each vector's hex

`protocol/tests/golden.rs` checks the crate produces exactly the bytes SPEC.md shows.
"""
import hashlib
import hmac
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

VERSION = int(sys.argv[1]) if len(sys.argv) > 1 else 3
SECRET = bytes(range(32))
SESSION = 0x0123456789ABCDEF


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


# --- POLYVAL (RFC 8452): GF(2^128) with x^128 + x^127 + x^126 + x^121 + 1, little-endian.
R = (1 << 128) | (1 << 127) | (1 << 126) | (1 << 121) | 1


def gf_mul(a, b):
    p = 0
    while b:
        if b & 1:
            p ^= a
        a <<= 1
        b >>= 1
    # reduce modulo R
    for i in range(p.bit_length() - 1, 127, -1):
        if p >> i & 1:
            p ^= R << (i - 128)
    return p


X_INV_128 = None


def dot(a, b):
    # POLYVAL's dot(a, b) = a * b * x^-128
    global X_INV_128
    if X_INV_128 is None:
        # x^-128 = inverse of x^128 mod R; x^128 mod R = x^127 + x^126 + x^121 + 1
        X_INV_128 = pow_inv(R ^ (1 << 128))
    return gf_mul(gf_mul(a, b), X_INV_128)


def pow_inv(a):
    # a^(2^128 - 2) in the field
    result, base, e = 1, a, (1 << 128) - 2
    while e:
        if e & 1:
            result = gf_mul(result, base)
        base = gf_mul(base, base)
        e >>= 1
    return result


def polyval(h, data):
    hk = int.from_bytes(h, "little")
    s = 0
    for i in range(0, len(data), 16):
        s = dot(s ^ int.from_bytes(data[i:i + 16], "little"), hk)
    return s.to_bytes(16, "little")


def check_polyval():
    # RFC 8452 Appendix A
    h = bytes.fromhex("25629347589242761d31f826ba4b757b")
    x = bytes.fromhex("4f4f95668c83dfb6401762bb2d01a262" "d1a24ddd2721d006bbe45f20d3c9f362")
    assert polyval(h, x).hex() == "f7a3b47b846119fae5b7866cf5e5b77e", polyval(h, x).hex()


def mac(m):
    k_hash = hmac.new(SECRET, b"sluice v2 2026-11 frame authentication: polyval", hashlib.sha256).digest()[:16]
    k_prf = hmac.new(SECRET, b"sluice v2 2026-11 frame authentication: aes-256", hashlib.sha256).digest()
    padded = m + b"\0" * (-len(m) % 16) + (8 * len(m)).to_bytes(8, "little") + b"\0" * 8
    enc = Cipher(algorithms.AES(k_prf), modes.ECB()).encryptor()
    return enc.update(polyval(k_hash, padded)) + enc.finalize()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def frame(kind, fields, payload=b""):
    m = b"SL" + bytes([VERSION]) + varint(kind) + fields + payload
    m += mac(m)
    return m + crc32c(m).to_bytes(4, "little")


def vectors():
    s = varint(SESSION)
    data_symbol = frame(
        0,
        s + varint(5) + varint(0) + varint(2)  # block: session, object 5, Data, index 2
        + varint(2) + varint(1) + varint(64) + varint(100)  # k, R, symbol_size, block_len
        + varint(1) + varint(1 << 20),  # symbol id, segment_size
        bytes(range(64)),
    )
    manifest_symbol = frame(
        0,
        s + varint(5) + varint(1) + varint(0)
        + varint(1) + varint(2) + varint(64) + varint(64)
        + varint(2) + varint(0),
        b"\xa5" * 64,
    )
    heartbeat = frame(1, s + varint(300) + varint(1_000_000) + varint(100_000_000) + varint(42))
    relay = frame(2, varint(7) + varint(1000) + varint(1_234_567) + varint(1) + varint(2) + varint(3) + varint(4))
    out = [
        ("Symbol, data block", data_symbol),
        ("Symbol, manifest block", manifest_symbol),
        ("Heartbeat", heartbeat),
        ("RelayStatus", relay),
    ]
    if VERSION >= 3:
        audit = frame(3, s + varint(1234) + bytes(range(0xA0, 0xC0)))
        out.append(("AuditHead", audit))
    return out


if __name__ == "__main__":
    check_polyval()
    for name, v in vectors():
        print(f"{name}: {v.hex()}")
