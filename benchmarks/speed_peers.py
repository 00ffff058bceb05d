"""Task: time and peak RSS of the domain peers next to STORM on the same tiled slides (CPU, full suite).

Each slide size is one tiled slide (``speed._speed_worker.tiled_slide``); STORM runs ``tl.embed`` +
``tl.domains`` (5 domains) on it in a fresh process, and each peer its whole documented workflow to 5 domains
(``peers/run_peer.py``, its own environment), under the same peak-RSS wrapper as the speed task.
"""

from __future__ import annotations

from _common import RESULTS
from domains import peer_command
from speed import _measure, measured_run, worker_out

SIZES = [1000, 10000]
PEERS = ("BANKSY", "CellCharter", "SpaGCN", "NOVAE")  # GraphST: 1502 s on 3.6k spots in the domain task
K = 5
PEER_TIMEOUT_S = 900


def _measure_peer(name: str, n: int, inp, python: str, seed: int) -> dict:
    out = RESULTS / "_tmp" / f"speed_peer_{name}_{n}.npz"
    m = measured_run(peer_command(name, inp, K, out, python, seed), out, PEER_TIMEOUT_S)
    if m["status"] != "ok":
        return {"method": name, "n_spots": n, "status": m["status"]}
    return {"method": name, "n_spots": n, "status": "ok", "seconds": round(m["wall_s"], 1),
            "spots_per_s": round(n / m["wall_s"], 1), "peak_rss_mb": m["peak_rss_mb"]}


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
        inp = worker_out("peer_input", n).with_suffix(".h5ad")  # written by the worker beside its JSON
        if made.get("status") != "ok" or not inp.exists():
            why = made.get("status") if made.get("status") != "ok" else f"{inp.name} not written"
            rows += [{"method": p, "n_spots": n, "status": f"no input: {why}"} for p in peers]
            continue
        for p in peers:
            rows.append(_measure_peer(p, n, inp, args.peer_python, args.seed))
        inp.unlink()
    return {"base_slide": args.speed_base, "k": K, "rows": rows, "peer_python": args.peer_python}
