"""The survey's Table 2 and Table 15 as data (ssm_ref.vision.survey_table).

Every registered scan order and scheme must have its prose row, so a new scan cannot be
added without one; every published number must name a source that is in the book's
bibliography; the measured locality agrees with ``locality_stats`` where both apply.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from ssm_ref.vision.multi import scan_scheme as _scan_scheme

from conftest import ROOT
from ssm_ref.vision import (SCAN_ORDERS, SCHEMES, locality_stats, scan_order, scan_scheme,
                            vim_tiny, vmamba_tiny)
from ssm_ref.vision.survey_table import (ORDER_NOTES, PUBLISHED_IMAGENET, SCHEME_NOTES,
                                         scan_table, scheme_locality)

NOTE_KEYS = {"figure", "characteristics", "strengths", "weaknesses", "use_cases"}


def bib_keys():
    text = (ROOT / "book" / "references.bib").read_text()
    return set(re.findall(r"^@\w+\{([^,\s]+),", text, re.M))


@pytest.mark.parametrize("name", sorted(SCAN_ORDERS))
def test_every_scan_order_has_its_table2_row(name):
    assert name in ORDER_NOTES, f"scan order {name!r} has no row in ORDER_NOTES"
    note = ORDER_NOTES[name]
    assert set(note) == NOTE_KEYS
    assert all(isinstance(v, str) and v.strip() for v in note.values()), note


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_every_scheme_has_its_table2_row(name):
    assert name in SCHEME_NOTES, f"scheme {name!r} has no row in SCHEME_NOTES"
    note = SCHEME_NOTES[name]
    assert set(note) == NOTE_KEYS
    assert all(isinstance(v, str) and v.strip() for v in note.values()), note


def test_no_table2_row_for_a_name_that_is_not_registered():
    assert set(ORDER_NOTES) <= set(SCAN_ORDERS), set(ORDER_NOTES) - set(SCAN_ORDERS)
    assert set(SCHEME_NOTES) <= set(SCHEMES), set(SCHEME_NOTES) - set(SCHEMES)


def test_scan_table_has_one_row_per_registered_name_in_registry_order():
    rows = scan_table(5, 6)
    assert [r["name"] for r in rows] == list(SCAN_ORDERS) + list(SCHEMES)
    assert [r["kind"] for r in rows] == ["order"] * len(SCAN_ORDERS) + ["scheme"] * len(SCHEMES)
    for r in rows:
        k = len(scan_scheme(r["name"], 5, 6)) if r["kind"] == "scheme" else 1
        assert r["directions"] == k
        # one direction per layer (ZigMa) or one order per channel head: one scan's work
        one_scan = r["parameters"] in ("per layer", "per head")
        assert r["tokens_per_layer"] == (30 if one_scan else r["tokens"])


def test_scan_table_counts_the_multi_head_scan_as_one_scan_and_video_as_two_frames():
    rows = {r["name"]: r for r in scan_table(4, 6)}
    assert rows["multihead"]["tokens"] == 4 * 24 and rows["multihead"]["tokens_per_layer"] == 24
    assert rows["vivim"]["directions"] == 3 and rows["vivim"]["tokens"] == 3 * 24
    assert rows["st_bidirectional"]["directions"] == 4
    # two stacked 2x6 frames: the temporal-first order visits cell (frame 1, 0, 0) = 12 second
    assert sv_scheme("vivim", 4, 6)[2][1] == 12


@pytest.mark.parametrize("H, W", [(14, 14), (7, 5), (1, 6), (4, 4)])
@pytest.mark.parametrize("name", sorted(SCAN_ORDERS))
def test_one_order_agrees_with_locality_stats(name, H, W):
    perm = scan_order(name, H, W)
    ours = scheme_locality([perm], H, W)
    ref = locality_stats(perm, H, W)
    assert ours["tokens"] == ours["longest"] == H * W
    assert ours["never_together"] == 0.0
    for a, b in [("mean_best_distance", "mean_neighbour_seq_distance"),
                 ("max_best_distance", "max_neighbour_seq_distance"),
                 ("mean_jump", "mean_jump_manhattan"), ("max_jump", "max_jump_manhattan"),
                 ("neighbour_step_fraction", "neighbour_step_fraction"),
                 ("near_fraction", "neighbour_fraction_near")]:
        assert math.isclose(ours[a], ref[b], rel_tol=1e-12) or (
            math.isnan(ours[a]) and math.isnan(ref[b])), (a, ours[a], ref[b])


def test_small_case_facts_written_out():
    # 2x2 grid, cells 0 1 / 2 3; adjacent pairs (0,1) (0,2) (1,3) (2,3).
    cross = scheme_locality(scan_scheme("vmamba_cross", 2, 2), 2, 2)
    assert (cross["directions"], cross["tokens"], cross["longest"]) == (4, 16, 4)
    assert cross["mean_best_distance"] == 1.0 and cross["never_together"] == 0.0
    # Vim's two directions are both raster: the vertical pairs stay 2 apart in both
    vim = scheme_locality(scan_scheme("vim_bidirectional", 2, 2), 2, 2)
    assert vim["mean_best_distance"] == 1.5 and vim["max_best_distance"] == 2.0
    # ES2D: four one-cell sub-grids, no pair of neighbours in one sequence
    es2d = scheme_locality(scan_scheme("es2d", 2, 2), 2, 2)
    assert (es2d["tokens"], es2d["longest"], es2d["never_together"]) == (4, 1, 1.0)
    assert math.isnan(es2d["mean_best_distance"]) and es2d["near_fraction"] == 0.0
    # a partial cover: [0, 1] and [2, 3, ...] -- pairs (0,2), (1,3) never together
    part = scheme_locality([np.array([0, 1]), np.array([3, 2])], 2, 2)
    assert part["never_together"] == 0.5 and part["mean_best_distance"] == 1.0
    assert part["mean_jump"] == 1.0 and part["neighbour_step_fraction"] == 1.0


def test_measured_claims_the_survey_map_page_makes():
    rows = {r["name"]: r for r in scan_table(14, 14)}
    L = 196
    assert rows["es2d"]["tokens"] == L and rows["vmamba_cross"]["tokens"] == 4 * L
    assert rows["es2d"]["never_together"] == 1.0
    assert rows["zigma"]["tokens_per_layer"] == L
    # a snake is continuous but keeps raster's mean neighbour distance
    assert rows["snake"]["neighbour_step_fraction"] == 1.0
    assert rows["snake"]["mean_best_distance"] == rows["raster"]["mean_best_distance"] == 7.5
    assert rows["vim_bidirectional"]["max_best_distance"] == 14.0


@pytest.mark.parametrize("perms, match", [
    ([], "empty"),
    ([np.array([0, 1, 1, 2])], "twice"),
    ([np.array([0, 1, 2, 4])], "outside"),
    ([np.array([0, 1, 2])], "unvisited"),
    ([np.array([[0, 1], [2, 3]])], "1-D integer"),
    ([np.array([0.0, 1.0, 2.0, 3.0])], "1-D integer"),
])
def test_scheme_locality_refuses_bad_input(perms, match):
    with pytest.raises(ValueError, match=match):
        scheme_locality(perms, 2, 2)


def test_scheme_locality_checks_sizes():
    with pytest.raises(ValueError, match="H"):
        scheme_locality([np.arange(4)], 0, 4)
    with pytest.raises(TypeError, match="W"):
        scheme_locality([np.arange(4)], 2, 2.5)


# ------------------------------------------------------------------ Table 15
REQUIRED = {"Vim-Ti", "Vim-S", "VMamba-T", "VMamba-S", "VMamba-B", "LocalVim-T", "LocalVMamba-T",
            "EfficientVMamba-T", "EfficientVMamba-S", "EfficientVMamba-B", "PlainMamba-L1",
            "PlainMamba-L2", "PlainMamba-L3", "DeiT-Ti", "DeiT-S", "Swin-T", "Swin-S",
            "ResNet-50", "ConvNeXt-T"}


def test_table15_covers_the_models_the_page_compares():
    names = [r["model"] for r in PUBLISHED_IMAGENET]
    assert len(names) == len(set(names))
    assert REQUIRED <= set(names), REQUIRED - set(names)


@pytest.mark.parametrize("row", PUBLISHED_IMAGENET, ids=lambda r: r["model"])
def test_every_published_number_has_a_source_in_the_bibliography(row):
    keys = bib_keys()
    assert row["source"] in keys, f"{row['model']}: {row['source']} not in references.bib"
    assert row["where"].strip()
    for field, (key, where) in row["other_sources"].items():
        assert field in row and key in keys and where.strip(), (row["model"], field, key)
    assert row["family"] in {"Mamba", "CNN", "Transformer"}
    for field in ("top1", "params_m", "gflops"):
        value = row[field]
        if value is None:  # an unverified number is left out and the row says why
            assert "not verified" in row["note"], row
        else:
            assert value > 0
    assert 50 < row["top1"] < 90


def test_our_presets_count_what_the_papers_publish():
    """Vim-Ti 7M (7.15 M counted) and VMamba-T (v0) 22M (22.89 M counted, cut not rounded)."""
    published = {r["model"]: r["params_m"] for r in PUBLISHED_IMAGENET}
    assert round(vim_tiny().n_params() / 1e6) == published["Vim-Ti"]
    assert int(vmamba_tiny().n_params() / 1e6) == published["VMamba-T (v0)"]
    assert round(vmamba_tiny().n_params() / 1e6) == published["VMamba-T (v0)"] + 1


def test_the_survey_map_page_cites_every_source_of_table15():
    page = (ROOT / "tutorials" / "survey_map.md").read_text()
    cited = set(re.findall(r"\{cite:[pt]\}`([^`]+)`", page))
    cited = {k.strip() for group in cited for k in group.split(",")}
    for row in PUBLISHED_IMAGENET:
        keys = {row["source"]} | {k for k, _ in row["other_sources"].values()}
        assert keys <= cited, (row["model"], keys - cited)


def sv_scheme(name, H, W):
    return _scan_scheme(name, H, W, frames=2)
