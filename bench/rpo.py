#!/usr/bin/env python3
"""Recovery point of continuous backup, measured from outside.

Every PERIOD seconds for SECONDS, writes a probe key to kvserver at ENDPOINT
(plain HTTP, no auth: the benchmark's own cluster) and notes the acknowledged
revision and time; watches DEST/<CLUSTER>/segments/ for the first segment whose
range reaches that revision. The recovery point of a write is the time from its
acknowledgement to the moment a segment holding it exists in the destination:
what a crash at that instant would lose. Prints one JSON object.

    rpo.py ENDPOINT DEST CLUSTER SECONDS [PERIOD]
"""
import json
import os
import sys
import time
import urllib.request


def put(endpoint, key, value):
    req = urllib.request.Request(
        f"http://{endpoint}/v1/kv/{key}",
        data=json.dumps({"value": value}).encode(),
        method="PUT",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)["revision"]


def shipped(segdir):
    best = 0
    try:
        names = os.listdir(segdir)
    except FileNotFoundError:
        return 0
    for n in names:
        if n.endswith(".kvseg"):
            try:
                best = max(best, int(n[: -len(".kvseg")].split("-")[1]))
            except (IndexError, ValueError):
                pass
    return best


def main():
    endpoint, dest, cluster, seconds = sys.argv[1:5]
    period = float(sys.argv[5]) if len(sys.argv) > 5 else 0.25
    segdir = os.path.join(dest, cluster, "segments")
    end = time.monotonic() + float(seconds)
    pending, samples, i, next_probe = [], [], 0, 0.0
    while time.monotonic() < end or pending:
        now = time.monotonic()
        if now > end + 120:
            raise SystemExit(f"{len(pending)} probes never shipped within 120 s")
        if now < end and now >= next_probe:
            i += 1
            rev = put(endpoint, f"rpo-probe/{i:06d}", str(i))
            pending.append((rev, time.monotonic()))
            next_probe = now + period
        top = shipped(segdir)
        seen = time.monotonic()
        still = []
        for rev, acked in pending:
            if rev <= top:
                samples.append((seen - acked) * 1000.0)
            else:
                still.append((rev, acked))
        pending = still
        time.sleep(0.02)
    samples.sort()
    pick = lambda q: round(samples[min(len(samples) - 1, int(q * len(samples)))], 1)
    print(json.dumps({"probes": len(samples), "rpo_p50_ms": pick(0.5),
                      "rpo_p99_ms": pick(0.99), "rpo_max_ms": round(samples[-1], 1)}))


if __name__ == "__main__":
    main()
