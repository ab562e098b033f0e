#!/usr/bin/env python3
"""Real Helm (the Helm library bundled by PyPI helm-sdkpy) for the e2e suite:

    helm.py install RELEASE CHART --namespace NS [--set key=value ...]
    helm.py test RELEASE --namespace NS
    helm.py uninstall RELEASE --namespace NS

Uses $KUBECONFIG. Prints the library's JSON answer; exits non-zero on failure.
"""
import argparse
import asyncio
import json
import os
import sys

import helm_sdkpy


def parse_set(pairs):
    values = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = values
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return values


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["install", "test", "uninstall", "status"])
    ap.add_argument("release")
    ap.add_argument("chart", nargs="?")
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--timeout", type=int, default=300)
    args = ap.parse_args()
    cfg = helm_sdkpy.Configuration(namespace=args.namespace, kubeconfig=os.environ.get("KUBECONFIG"))
    if args.action == "install":
        if not args.chart:
            ap.error("install needs a CHART")
        result = await helm_sdkpy.Install(cfg).run(
            args.release, args.chart, values=parse_set(args.set), create_namespace=True,
            wait=True, timeout=args.timeout)
    elif args.action == "test":
        result = await helm_sdkpy.Test(cfg).run(args.release)
    elif args.action == "uninstall":
        result = await helm_sdkpy.Uninstall(cfg).run(args.release, wait=True, timeout=args.timeout)
    else:
        result = await helm_sdkpy.Status(cfg).run(args.release)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except helm_sdkpy.HelmError as e:
        print(f"helm: {e}", file=sys.stderr)
        sys.exit(1)
