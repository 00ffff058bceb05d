"""Readers of the shared real-data folder (``$STORM_ST_DATA`` or ``../shared/data``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from storm_st._utils import data_dir

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["dlpfc", "her2st"]

EMBEDDED_DLPFC = "151673"


def her2st(section: str, **kwargs: Any) -> AnnData:
    """Read a HER2ST section (e.g. ``'C2'``) from the shared data folder.

    Parameters
    ----------
    section
        Section name (``A1`` ... ``H3``); images exist for C2-C6, pathologist labels for A1, C1, D1, E1, F1.
    **kwargs
        Passed to :func:`storm_st.io.read_her2st` (e.g. ``image_downscale=2``, ``mpp=``).

    Returns
    -------
    See :func:`storm_st.io.read_her2st`.
    """
    from storm_st.io import read_her2st_section

    root = data_dir() / "her2st"
    if not root.is_dir():
        raise FileNotFoundError(
            f"HER2ST folder not found at {str(root)!r}; set $STORM_ST_DATA to the folder holding 'her2st/', or use "
            "storm_st.datasets.demo() for the embedded section C6."
        )
    return read_her2st_section(root, section, **kwargs)


def dlpfc(sample_id: str = EMBEDDED_DLPFC) -> AnnData:
    """DLPFC Visium section with manual layer labels (``obs['layer']``).

    Section 151673 is embedded in the package; others (151674, 151675) are read from the shared data folder.

    Parameters
    ----------
    sample_id
        spatialLIBD sample id.

    Returns
    -------
    See :func:`storm_st.io.read_dlpfc`.
    """
    sample_id = str(sample_id)
    if sample_id == EMBEDDED_DLPFC:
        from ._embedded import embedded_dlpfc

        return embedded_dlpfc()
    from storm_st.io import read_dlpfc

    path = data_dir() / "dlpfc" / f"DLPFC_{sample_id}.h5ad"
    if not path.exists():
        known = sorted(p.stem.removeprefix("DLPFC_") for p in path.parent.glob("DLPFC_*.h5ad"))
        raise FileNotFoundError(
            f"DLPFC sample {sample_id!r} not found at {str(path)!r} (available: {known or 'none'}; "
            f"{EMBEDDED_DLPFC} is embedded). Set $STORM_ST_DATA to the shared data folder."
        )
    return read_dlpfc(path)
