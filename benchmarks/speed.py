"""Task 3: throughput and peak memory of tl.embed / tl.impute_expression vs slide size (CPU, or a GPU with --device cuda)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS

SIZES = {"quick": [1000], "full": [1000, 10000, 100000]}
BREAKDOWN_MAX = 10000

_WRAP = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
)


def measured_run(args: list[str], out: Path, timeout: float) -> dict:
    """Run ``args`` under a tiny wrapper whose RUSAGE_CHILDREN is exactly that process's peak RSS.

    Returns ``{"status": "ok", "wall_s", "peak_rss_mb"}`` when it exited 0 and wrote ``out``, else
    ``{"status": "timeout after ... s" | "error: <last stderr line>"}``.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    t = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", _WRAP, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout} s"}
    wall = time.perf_counter() - t
    peak = next((int(ln.split()[1]) for ln in p.stdout.splitlines() if ln.startswith("PEAK_RSS_KB")), None)
    if p.returncode != 0 or not out.exists():
        err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        return {"status": f"error: {(err[-1] if err else p.returncode)}"[:300]}
    return {"status": "ok", "wall_s": wall, "peak_rss_mb": round(peak / 1024, 1) if peak else None}


def worker_out(op: str, n: int, device: str = "cpu") -> Path:
    """Where the worker writes the JSON result of ``op`` on ``n`` spots (``peer_input`` also writes its slide beside
    it, with the suffix ``.h5ad``)."""
    return RESULTS / "_tmp" / f"speed_{op}_{n}_{device}.json"


def _measure(op: str, n: int, model: str, base: str, timeout: int, device: str = "cpu") -> dict:
    """One worker operation in a fresh process: its JSON result plus peak RSS and process wall time."""
    out = worker_out(op, n, device)
    worker = str(Path(__file__).parent / "_speed_worker.py")
    m = measured_run([sys.executable, worker, op, str(n), model, str(out), "--base", base, "--device", device], out, timeout)
    if m["status"] != "ok":
        return {"op": op, "n_spots": n, "status": m["status"]}
    r = json.loads(out.read_text())
    r["status"] = "ok"
    r["peak_rss_mb"] = m["peak_rss_mb"]
    r["process_wall_s"] = round(m["wall_s"], 1)
    return r


def run(args, suite: str) -> dict:
    sizes = args.sizes or SIZES[suite]
    timeout = 3000 if suite == "full" else 600
    dev = args.device
    wanted = set(args.speed_ops or ("embed", "impute", "impute_tta", "breakdown", "train_step"))
    rows = []
    for i, n in enumerate(sizes):
        ops = ["embed", "impute", "impute_tta"] if i == 0 else ["embed", "impute"]
        if n <= BREAKDOWN_MAX:
            ops.append("breakdown")
        if i == 0:
            ops.append("train_step")
        for op in ops:
            if op in wanted:
                rows.append(_measure(op, n, args.model, args.speed_base, timeout, dev))
    return {"base_slide": args.speed_base, "device": dev, "rows": rows}
