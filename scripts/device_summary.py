"""Fold the outputs of ``scripts/device_check.sh`` into ``summary.json`` and print a short
table (the device tool's reply carries only the end of the output).

    python scripts/device_summary.py OUT WORK     # called by device_check.sh, last

It reads WORK/steps.tsv (name, exit status, seconds, limit per step) and
WORK/env.json, and from OUT the pytest JUnit file and the JSON that the
planner, bench and kld steps wrote, and never fails on a missing or broken
file: a step that failed is in the summary with what it left. Exits 1 when
any step failed or was skipped, so the device call's rc says it too.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing or not JSON (its step then failed)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_steps(path: Path) -> list[dict[str, Any]]:
    """One row per step: name, rc (an int, or "skipped" when the time budget ran out)."""
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        name, rc, seconds, limit = (line.split("\t") + ["", "", "", ""])[:4]
        steps.append({"name": name, "rc": int(rc) if rc.lstrip("-").isdigit() else rc,
                      "seconds": float(seconds or 0), "limit_seconds": int(limit or 0),
                      "timed_out": rc in ("124", "137")})
    return steps


def read_tests(path: Path) -> dict[str, Any] | None:
    """Counts and each test's outcome from pytest's JUnit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    cases: dict[str, dict[str, Any]] = {}
    for case in root.iter("testcase"):
        outcome, message = "passed", None
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome, message = child.tag, (child.get("message") or "")[:300]
        cases[case.get("name", "?")] = {"outcome": outcome, "seconds": float(case.get("time", 0)), "message": message}
    counts: dict[str, int] = {}
    for result in cases.values():
        counts[result["outcome"]] = counts.get(result["outcome"], 0) + 1
    return {"counts": counts, "tests": cases}


def bench_headline(bench: Any) -> dict[str, Any] | None:
    """Per corpus: tokens/s of lleval and the naive loop, MFU, memory, padding."""
    if not isinstance(bench, dict):
        return None
    keys = ("tokens", "lleval_tokens_per_second", "naive_tokens_per_second", "speedup", "lleval_mfu", "naive_mfu",
            "lleval_share_of_measured_matmul", "lleval_peak_memory_gb", "naive_peak_memory_gb", "padding_share",
            "batches", "out_of_memory_splits", "relative_difference_vs_naive")
    out: dict[str, Any] = {k: bench.get(k) for k in ("model_config", "parameters", "bf16_matmul_tflops_measured")}
    for name in ("short", "long", "tiny"):
        if isinstance(bench.get(name), dict):
            out[name] = {k: bench[name].get(k) for k in keys}
    return out


def kld_headline(kld: Any) -> dict[str, Any] | None:
    """What bf16 costs against float32: mean KL, top-token agreement, ln PPL ratio."""
    if not isinstance(kld, dict):
        return None
    return {"model_dtype": kld.get("model", {}).get("dtype"), "base_dtype": kld.get("base", {}).get("dtype"),
            "device": kld.get("model", {}).get("device"), "tokens": kld.get("tokens"),
            "mean_kl_nats": kld.get("kl_divergence", {}).get("mean"),
            "top_token_agreement": kld.get("top_token_agreement"),
            "ln_ppl_ratio": kld.get("perplexity", {}).get("ln_ratio"),
            "ln_ppl_ratio_ci": kld.get("perplexity", {}).get("ln_ratio_ci")}


def summarise(out: Path, work: Path) -> dict[str, Any]:
    """The summary: every step's status, the environment, and each step's headline figures."""
    steps = read_steps(work / "steps.tsv")
    failed = [s["name"] for s in steps if s["rc"] != 0]
    return {
        "status": "failed" if failed or not steps else "ok",
        "failed_steps": failed,
        "dry_run": (work / "dry-run").exists(),
        "steps": steps,
        "environment": read_json(work / "env.json"),
        "tests": read_tests(out / "tests.xml"),
        "planner": read_json(out / "planner.json"),
        "bench": bench_headline(read_json(out / "bench.json")),
        "kld": kld_headline(read_json(out / "kld.json")),
    }


def print_table(summary: dict[str, Any]) -> None:
    """A few lines for the end of the output."""
    for step in summary["steps"]:
        print(f"  {step['name']:8} rc={step['rc']!s:8} {step['seconds']:6.1f} s (limit {step['limit_seconds']} s)")
    tests = summary["tests"] or {}
    print(f"  tests: {tests.get('counts')}")
    for name, case in (tests.get("tests") or {}).items():
        if case["outcome"] != "passed":
            print(f"    {case['outcome']}: {name}: {case['message']}")
    for name, case in ((summary["planner"] or {}).get("cases") or {}).items():
        print(f"  planner {name}: {case.get('seconds_per_million_tokens', 0):.3f} s per 1M tokens")
    for name in ("short", "long", "tiny"):
        c = (summary["bench"] or {}).get(name)
        if c:
            mfu = "n/a" if c["lleval_mfu"] is None else f"{c['lleval_mfu'] * 100:.1f}%"
            print(f"  bench {name}: lleval {c['lleval_tokens_per_second']:.0f} tok/s, naive "
                  f"{c['naive_tokens_per_second']:.0f}, MFU {mfu}, padding {c['padding_share'] * 100:.1f}%")
    if summary["kld"]:
        print(f"  kld: {summary['kld']}")
    print(f"status: {summary['status']}" + (f" (failed: {', '.join(summary['failed_steps'])})"
                                            if summary["failed_steps"] else ""))


def main() -> None:
    """Write OUT/summary.json, print the table, exit 1 unless every step passed."""
    out, work = Path(sys.argv[1]), Path(sys.argv[2])
    summary = summarise(out, work)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_table(summary)
    sys.exit(0 if summary["status"] == "ok" else 1)


if __name__ == "__main__":
    main()
