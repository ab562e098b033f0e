#!/usr/bin/env python3
"""Lints the Helm chart with the real Helm library (PyPI helm-sdkpy); exits non-zero on errors.

The chart is linted as shipped, then once more in its namespace-scoped mode
(`watchNamespaces` set, token reviewers off) from a temporary copy whose
values.yaml says so, so both RBAC branches of the templates render.
"""
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path

import helm_sdkpy
import yaml

NAMESPACED = {"watchNamespaces": ["team-a", "team-b"], "rbac": {"create": True, "tokenReviewers": False}}


async def lint(chart: str, label: str) -> bool:
    result = await helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(chart)
    print(f"# {label}\n{json.dumps(result, indent=2)}")
    text = json.dumps(result).lower()
    return any(k in result and result[k] for k in ("errors", "Errors")) or '"severity": "error"' in text


async def main(chart: str) -> int:
    failed = await lint(chart, "as shipped")
    with tempfile.TemporaryDirectory(prefix="kvc-chart-") as tmp:
        copy = Path(tmp) / Path(chart).name
        shutil.copytree(chart, copy)
        values = copy / "values.yaml"
        merged = yaml.safe_load(values.read_text()) | NAMESPACED
        values.write_text(yaml.safe_dump(merged))
        failed = await lint(str(copy), "namespace-scoped") or failed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "charts/kvcluster-operator")))
