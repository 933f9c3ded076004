#!/usr/bin/env python3
"""Reads the Raft suite's result lines (stdin) and prints them beside the Go
reference run quoted in issue 2 (RPCs / bytes), with totals and ratios."""
import re
import sys

REF = {
    "initial election": (60, 16440),
    "election after network failure": (131, 24748),
    "multiple elections": (652, 124444),
    "basic agreement": (14, 3895),
    "RPC byte count": (46, 163597),
    "test progressive failure of followers": (131, 25730),
    "test failure of leaders": (184, 39779),
    "agreement after follower reconnects": (95, 23640),
    "no agreement if too many followers disconnect": (237, 45776),
    "concurrent Start()s": (16, 4247),
    "rejoin of partitioned leader": (180, 43802),
    "leader backs up quickly over incorrect follower logs": (1873, 1371812),
    "RPC counts aren't too high": (44, 12853),
    "basic persistence": (114, 29608),
    "more persistence": (1403, 274158),
    "partitioned leader and one follower crash, leader restarts": (31, 7921),
    "Figure 8": (1233, 235905),
    "unreliable agreement": (521, 168080),
    "Figure 8 (unreliable)": (3660, 14813397),
    "churn": (817, 470770),
    "unreliable churn": (1087, 756793),
    "snapshots basic": (136, 55045),
    "install snapshots (disconnect)": (1555, 561343),
    "install snapshots (disconnect+unreliable)": (2043, 652621),
    "install snapshots (crash)": (1424, 487356),
    "install snapshots (unreliable+crash)": (1789, 619934),
    "crash and restart all servers": (280, 83229),
    "snapshot initialization after crash": (62, 17964),
}
LINE = re.compile(r"Test \((2[A-D])\): (.*) \.\.\. Passed -- +([\d.]+) +(\d+) +(\d+) +(\d+) +(\d+)")

rows = {}
for line in sys.stdin:
    m = LINE.search(line)
    if m:
        rows[m.group(2)] = (m.group(1), float(m.group(3)), int(m.group(4)), int(m.group(5)), int(m.group(6)), int(m.group(7)))
print(f"{'test':<62} {'vsec':>5} {'rpcs':>6} {'go':>6} {'bytes':>9} {'go':>9} {'cmds':>5}")
tot = [0, 0, 0, 0]
for name, (gr, gb) in REF.items():
    if name not in rows:
        print(f"{name:<62} MISSING")
        continue
    part, secs, peers, rpcs, nbytes, cmds = rows[name]
    tot[0] += rpcs; tot[1] += gr; tot[2] += nbytes; tot[3] += gb
    print(f"{'('+part+') '+name:<62} {secs:5.1f} {rpcs:6} {gr:6} {nbytes:9} {gb:9} {cmds:5}")
print(f"{'TOTAL':<62} {'':5} {tot[0]:6} {tot[1]:6} {tot[2]:9} {tot[3]:9}")
print(f"ratio ours/go: RPCs {tot[0]/tot[1]:.3f}, bytes {tot[2]/tot[3]:.4f}")
