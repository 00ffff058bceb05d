"""Task: time and peak RSS of the domain peers next to STORM on the same tiled slides (CPU, full suite).

Each slide size is one tiled slide (``speed._speed_worker.tiled_slide``); STORM runs ``tl.embed`` +
``tl.domains`` (5 domains) on it in a fresh process, and each peer its whole documented workflow to 5 domains
(``peers/run_peer.py``, its own environment), under the same peak-RSS wrapper as the speed task.
"""

from __future__ import annotations

import subprocess
import sys
import time

from _common import RESULTS
from domains import peer_command
from speed import _WRAP, _measure

SIZES = [1000, 10000]
PEERS = ("BANKSY", "CellCharter", "SpaGCN", "NOVAE")  # GraphST: 1502 s on 3.6k spots in the domain task
K = 5
PEER_TIMEOUT_S = 900


def _measure_peer(name: str, n: int, inp, python: str, seed: int) -> dict:
    out = RESULTS / "_tmp" / f"speed_peer_{name}_{n}.npz"
    if out.exists():
        out.unlink()
    cmd = [sys.executable, "-c", _WRAP, *peer_command(name, inp, K, out, python, seed)]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=PEER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"method": name, "n_spots": n, "status": f"timeout after {PEER_TIMEOUT_S} s"}
    wall = time.perf_counter() - t
    peak = next((int(ln.split()[1]) for ln in p.stdout.splitlines() if ln.startswith("PEAK_RSS_KB")), None)
    if p.returncode != 0 or not out.exists():
        err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        return {"method": name, "n_spots": n, "status": f"error: {(err[-1] if err else p.returncode)}"[:300]}
    return {"method": name, "n_spots": n, "status": "ok", "seconds": round(wall, 1),
            "spots_per_s": round(n / wall, 1), "peak_rss_mb": round(peak / 1024, 1) if peak else None}


def run(args, suite: str) -> dict:
    if suite != "full":
        return {"rows": [], "note": "peer timings run in the full suite only (--suite full --tasks speed_peers)"}
    if not args.peer_python:
        return {"rows": [], "note": "no peer environment (pip install -r benchmarks/requirements.txt in benchmarks/.venv-peers)"}
    sizes = args.sizes or SIZES
    peers = args.peers or list(PEERS)
    rows = []
    for n in sizes:
        r = _measure("embed_domains", n, args.model, args.speed_base, PEER_TIMEOUT_S)
        r["method"] = "STORM (tl.embed + tl.domains)"
        rows.append(r)
        made = _measure("peer_input", n, args.model, args.speed_base, 600)
        inp = RESULTS / "_tmp" / f"speed_peer_input_{n}.h5ad"
        if made.get("status") != "ok" or not inp.exists():
            rows += [{"method": p, "n_spots": n, "status": f"no input: {made.get('status')}"} for p in peers]
            continue
        for p in peers:
            rows.append(_measure_peer(p, n, inp, args.peer_python, args.seed))
        inp.unlink()
    return {"base_slide": args.speed_base, "k": K, "rows": rows, "peer_python": args.peer_python}
