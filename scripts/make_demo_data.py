"""Derive the data embedded in ``storm_st.datasets`` from the shared real datasets.

Run from the project root (needs ../shared/data or $STORM_ST_DATA)::

    python scripts/make_demo_data.py

Writes ``src/storm_st/datasets/_data/``:

- ``her2st_C6.h5ad`` (gzip): HER2ST section C6 (a held-out test section), all genes, raw counts,
  full-resolution spot coordinates and scale factors (image stored separately);
- ``her2st_C6_hires.jpg``: the C6 H&E at half resolution (≈1.38 µm/px, JPEG quality 90), used with
  ``tissue_hires_scalef = 0.5`` so full-resolution coordinates stay valid;
- ``dlpfc_151673.h5ad`` (gzip): DLPFC 151673 with manual layers and its 600 x 600 low-res image;
- ``genesets/``: MSigDB hallmark gene sets (human, mouse) with their licence and provenance.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from storm_st._constants import Keys
from storm_st._utils import data_dir
from storm_st.io import read_dlpfc, read_her2st_section

OUT = Path(__file__).resolve().parents[1] / "src" / "storm_st" / "datasets" / "_data"
DOWNSCALE = 2
JPEG_QUALITY = 90


def main() -> None:
    root = data_dir()
    OUT.mkdir(parents=True, exist_ok=True)

    # --- HER2ST C6 ---
    adata = read_her2st_section(root / "her2st", "C6", image_downscale=DOWNSCALE)
    lib = adata.uns[Keys.SPATIAL]["C6"]
    img = lib[Keys.IMAGES].pop(Keys.HIRES)
    Image.fromarray(img).save(OUT / "her2st_C6_hires.jpg", quality=JPEG_QUALITY, optimize=True)
    lib[Keys.METADATA]["source"] = "HER2ST (Andersson et al., Nat Commun 2021; github.com/almaan/her2st), section C6"
    lib[Keys.METADATA].pop("image_file", None)
    lib[Keys.METADATA]["image_file"] = "her2st_C6_hires.jpg"
    adata.write_h5ad(OUT / "her2st_C6.h5ad", compression="gzip", compression_opts=9)

    # --- DLPFC 151673 ---
    dl = read_dlpfc(root / "dlpfc" / "DLPFC_151673.h5ad")
    for col in ("pxl_row_in_fullres", "pxl_col_in_fullres"):
        dl.obs.pop(col)
    dl.write_h5ad(OUT / "dlpfc_151673.h5ad", compression="gzip", compression_opts=9)

    # --- hallmark gene sets ---
    for name in ("hallmarks_pathways_human.json", "mouse_hallmarks.json", "NOVAE_LICENSE", "SOURCE.txt"):
        shutil.copyfile(root / "genesets" / name, OUT / "genesets" / name)

    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{p.relative_to(OUT)}: {p.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
