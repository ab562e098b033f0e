#!/usr/bin/env python3
"""Lints the Helm chart with the real Helm library (PyPI helm-sdkpy); exits non-zero on errors."""
import asyncio
import json
import sys

import helm_sdkpy


async def main(chart: str) -> int:
    result = await helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(chart)
    print(json.dumps(result, indent=2))
    text = json.dumps(result).lower()
    failed = any(k in result and result[k] for k in ("errors", "Errors")) or '"severity": "error"' in text
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "charts/kvcluster-operator")))
