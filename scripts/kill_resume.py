"""Kill a real `lleval score --checkpoint` run at random moments, resume it, and compare.

Runs the CLI once uninterrupted, then the same command with a checkpoint,
SIGKILLed ``--kills`` times (one of them just as a checkpoint file is being
written), each time resumed by re-running the same command; finally the
resumed report's documents must equal the uninterrupted report's and the
totals agree to 1e-12. Prints one line per kill and a verdict.

    .venv/bin/python scripts/kill_resume.py --kills 5 --limit 8 --max-length 256
    .venv/bin/python scripts/kill_resume.py --block-tokens 1048576   # one block: saves between batches
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLEVAL = [sys.executable, "-m", "lleval"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the built-in SmolLM2-135M")
    parser.add_argument("--data", default=None, help="default: the built-in sample prose")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--block-tokens", type=int, default=256,
                        help="lleval's own default, 1048576, puts a short run in one block: saves come between batches")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="lleval-kill-"))
    base = ["score", "-q", "--bootstrap", "0", "-L", str(args.max_length), "-S", str(args.max_length // 4),
            "-b", "2", "--block-tokens", str(args.block_tokens), "--limit", str(args.limit)]
    if args.model:
        base += ["-m", args.model]
    if args.data:
        base += ["-d", args.data]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

    started = time.time()
    subprocess.run(LLEVAL + base + ["-o", str(work / "full.json")], check=True, env=env, capture_output=True)
    duration = time.time() - started
    print(f"uninterrupted run: {duration:.1f} s", flush=True)

    ckpt, out = work / "run.ckpt", work / "resumed.json"
    command = LLEVAL + base + ["--checkpoint", str(ckpt), "--checkpoint-every", "0", "-o", str(out)]
    for kill in range(args.kills):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kill == 0:  # just as a checkpoint is being written: its temp file exists
            deadline = time.time() + duration * 2
            while time.time() < deadline and proc.poll() is None and not list(work.glob(".run.ckpt.*.tmp")):
                time.sleep(0.001)
            moment = "mid-write"
        else:
            # loading the model takes about half the run: kill anywhere from loading to scoring
            delay = rng.uniform(0.2, 0.9) * duration
            time.sleep(delay)
            moment = f"after {delay:.1f} s"
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            saved = json.loads(ckpt.read_text()) if ckpt.exists() else {"rows": 0}
            batches = len((saved.get("partial") or {}).get("shapes", []))
            print(f"kill {kill + 1}: SIGKILL {moment}; checkpoint holds {saved['rows']} documents and {batches} "
                  "batches of the next block", flush=True)
        else:
            print(f"kill {kill + 1}: the run had already finished ({moment})", flush=True)
    subprocess.run(command, check=True, env=env, capture_output=True)
    full = json.loads((work / "full.json").read_text())
    resumed = json.loads(out.read_text())
    same_rows = full["documents"] == resumed["documents"]
    a, b = full["totals"]["log_likelihood"], resumed["totals"]["log_likelihood"]
    close = abs(a - b) <= 1e-12 * abs(a)
    print(f"documents identical: {same_rows}; totals {a!r} vs {b!r}; complete: {resumed['complete']}")
    ok = same_rows and close and resumed["complete"]
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
