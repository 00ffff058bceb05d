import json

from storm_st.cli import main


def test_version(capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "storm-st" in capsys.readouterr().out


def test_demo_end_to_end(tmp_path, capsys):
    """The README's main job: embedded data + default model, offline."""
    assert main(["demo", "--output", str(tmp_path), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    c6 = summary["her2st_c6"]
    assert c6["n_spots"] == 176 and 3 <= c6["n_domains"] <= 8
    assert -1 <= c6["virtual_median_pcc_top50"] <= 1
    assert 0 <= summary["dlpfc_151673"]["ARI"] <= 1
    for f in ("c6_domains.png", "c6_virtual_expression.png", "dlpfc_domains.png", "her2st_c6.h5ad"):
        assert (tmp_path / f).stat().st_size > 0
    assert "median gene-wise PCC" in capsys.readouterr().out
