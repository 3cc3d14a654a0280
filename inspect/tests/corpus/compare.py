#!/usr/bin/env python3
"""Side by side: what picklescan, modelscan and fickling say of each corpus file, and what
Sluice's gate says.

    python3 make_corpus.py OUT
    python3 compare.py OUT path/to/sluice-inspect [--table]

Each tool is run on each file as its README says (picklescan --path, modelscan -p,
fickling --check-safety); exit 0 is "admitted", 1 "refused", anything else "error" (the tool
failed on the file: a gate that lets such files through admits them). Tools that are not
installed are left out. Prints per-tool totals, and with --table one line per file.
"""

import shutil
import subprocess
import sys

TOOLS = {
    "picklescan": lambda f: ["picklescan", "--path", f],
    "modelscan": lambda f: ["modelscan", "-p", f],
    "fickling": lambda f: ["fickling", "--check-safety", f],
}


def verdict(argv):
    try:
        rc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            timeout=120).returncode
    except subprocess.TimeoutExpired:
        return "error"
    return {0: "admitted", 1: "refused"}.get(rc, "error")


def main():
    out, sluice = sys.argv[1], sys.argv[2]
    table = "--table" in sys.argv
    tools = {name: argv for name, argv in TOOLS.items() if shutil.which(name)}
    tools["sluice"] = lambda f: [sluice, f]
    cases = [line.rstrip("\n").split("\t", 2) for line in open(f"{out}/index.tsv")]
    totals = {name: {"malicious": 0, "benign": 0, "error": 0} for name in tools}
    counts = {"malicious": 0, "benign": 0}
    if table:
        print("| file | " + " | ".join(tools) + " |")
        print("|---|" + "---|" * len(tools))
    for kind, name, _source in cases:
        path = f"{out}/{kind}/{name}"
        counts[kind] += 1
        row = []
        for tool, argv in tools.items():
            v = verdict(argv(path))
            row.append(v)
            if v == "error":
                totals[tool]["error"] += 1
            if (kind == "malicious" and v == "refused") or (kind == "benign" and v == "admitted"):
                totals[tool][kind] += 1
        if table:
            print(f"| {kind}/{name} | " + " | ".join(row) + " |")
    print(f"\n{counts['malicious']} malicious, {counts['benign']} benign files")
    for tool, t in totals.items():
        print(f"{tool:11} refused {t['malicious']:3}/{counts['malicious']} malicious, "
              f"admitted {t['benign']:3}/{counts['benign']} benign, {t['error']:3} errors")


main()
