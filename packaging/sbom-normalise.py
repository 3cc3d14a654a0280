#!/usr/bin/env python3
"""Makes a cargo-cyclonedx SBOM (stdin) reproducible (stdout): cargo-cyclonedx 0.5.9 writes a
random serial number, the current time, and the checkout's path in its references
(cyclonedx-rust-cargo issue 514). The serial number is left out (it is optional), the time is
SOURCE_DATE_EPOCH, the checkout's path becomes /build/sluice.

    sbom-normalise.py CHECKOUT SOURCE_DATE_EPOCH <in.cdx.json >out.cdx.json
"""
import datetime
import json
import sys

checkout, epoch = sys.argv[1].rstrip("/"), int(sys.argv[2])
text = sys.stdin.read().replace("file://" + checkout + "/", "file:///build/sluice/")
if checkout in text:
    sys.exit(f"sbom-normalise.py: {checkout} is still in the SBOM")
bom = json.loads(text)
bom.pop("serialNumber", None)
bom["metadata"]["timestamp"] = datetime.datetime.fromtimestamp(
    epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
bom["metadata"].setdefault("properties", []).append(
    {"name": "cdx:reproducible", "value": "true"})
json.dump(bom, sys.stdout, indent=2, sort_keys=True)
sys.stdout.write("\n")
