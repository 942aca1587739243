"""benchmarks/profile_loops.py: perf's samples charged to the innermost loops of the machine
code, on a listing written by hand (where the answer is known), and once for real where
perf may sample a process here."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from cases import script_module, script_refusal
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "profile_loops.py"

# two nested loops and straight-line code around them, as objdump -D prints them
LISTING = """
/tmp/code.bin:     file format binary

Disassembly of section .data:

0000000000001000 <.data>:
    1000:\t48 89 c8             \tmov    %rcx,%rax
    1003:\tc5 fc 10 04 24       \tvmovups (%rsp),%ymm0
    1008:\tc4 e2 7d a8 c1       \tvfmadd213ps %ymm1,%ymm0,%ymm0
    100d:\tc5 f5 72 f0 17       \tvpslld $0x17,%ymm0,%ymm1
    1012:\tc5 fc 5e c1          \tvdivps %ymm1,%ymm0,%ymm0
    1016:\t48 ff c9             \tdec    %rcx
    1019:\t75 ed                \tjne    0x1008
    101b:\tc5 fc 59 c1          \tvmulps %ymm1,%ymm0,%ymm0
    101f:\tc4 e3 7d 19 c1 01    \tvextractf128 $0x1,%ymm0,%xmm1
    1025:\t48 ff ca             \tdec    %rdx
    1028:\t75 d6                \tjne    0x1000
    102a:\tc3                   \tret
"""

REPORT = """
# Samples: 1K of event 'cpu-clock'
#
    40.00%  [.] 0x0000000000001008
    20.00%  [.] 0x0000000000001012
    25.00%  [.] 0x000000000000101f
     5.00%  [.] 0x000000000000102a
    10.00%  [.] _PyEval_EvalFrameDefault
"""


@pytest.fixture(scope="module")
def prof():
    return script_module(SCRIPT, "profile_loops")


def test_report_splits_numba_code_from_named_symbols(prof):
    at, elsewhere = prof.sample_shares(REPORT)
    assert at == {0x1008: 40.0, 0x1012: 20.0, 0x101F: 25.0, 0x102A: 5.0}
    assert elsewhere == pytest.approx(10.0)


def test_listing_is_read_instruction_by_instruction(prof):
    code = prof.instructions(LISTING)
    assert [a for a, _, _ in code] == [0x1000, 0x1003, 0x1008, 0x100D, 0x1012, 0x1016, 0x1019,
                                      0x101B, 0x101F, 0x1025, 0x1028, 0x102A]
    assert code[1] == (0x1003, "vmovups", "(%rsp),%ymm0")


def test_samples_go_to_the_innermost_loop(prof):
    code = prof.instructions(LISTING)
    owner = prof.innermost_loops(code)
    inner, outer = (2, 6), (0, 10)
    assert owner[:2] == [outer] * 2 and owner[2:7] == [inner] * 5
    assert owner[7:11] == [outer] * 4 and owner[11] is None
    at, _ = prof.sample_shares(REPORT)
    rows = prof.loop_table(code, at)
    assert [(r["loop"], r["share_pct"]) for r in rows] == [
        ("0x1008-0x1019", 60.0), ("0x1000-0x1028", 25.0), ("outside loops", 5.0)]
    inner_row = rows[0]
    assert inner_row["instructions"] == 5
    assert {k: inner_row[k] for k in prof.KINDS} == {
        "vector": 3, "mul/FMA": 1, "exp": 1, "stack": 0, "shuffle": 0, "div": 1}
    assert rows[1]["stack"] == 1 and rows[1]["shuffle"] == 1  # the outer loop's whole body
    assert inner_row["body"][0] == "vfmadd213ps %ymm1,%ymm0,%ymm0"
    only_inner = prof.loop_table(code, {0x1008: 40.0, 0x102A: 5.0})  # outer loop unsampled
    assert [(r["loop"], r["share_pct"]) for r in only_inner] == [
        ("0x1008-0x1019", 40.0), ("outside loops", 5.0)]


def test_nothing_sampled_in_numba_code_is_an_error(prof):
    with pytest.raises(SystemExit, match="no samples in Numba's code"):
        prof.code_ranges({0x1000: 0.01})
    assert prof.code_ranges({0x5123: 3.0, 0x7004: 1.0, 0x7FFF_0000: 2.0}) == [
        (0x5000 - prof._MARGIN, 0x8000 + prof._MARGIN),  # near each other: one span
        (0x7FFF_0000 - prof._MARGIN, 0x7FFF_1000 + prof._MARGIN)]


def test_only_mapped_memory_is_copied(prof):
    maps = ("00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/python\n"
            "00452000-00460000 ---p 00000000 00:00 0\n"
            "00460000-00470000 rw-p 00000000 00:00 0 [heap]\n")
    assert prof.readable(0x450000, 0x468000, maps) == [(0x450000, 0x452000),
                                                        (0x460000, 0x468000)]
    assert prof.readable(0x500000, 0x510000, maps) == []


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "--threads and --top take positive integers"),
    (["--seconds", "-1"], "--seconds a positive number"),
    (["--out", "no/such/folder"], "--out must be an existing folder"),
    (["--case", "huge"], "invalid choice: 'huge'"),
])
def test_bad_arguments_are_refused_in_one_line(args, message):
    status, stderr = script_refusal(SCRIPT, *args)
    assert status == 2 and message in stderr


def _perf_can_sample():
    if shutil.which("perf") is None or shutil.which("objdump") is None:
        return False
    probe = subprocess.run(["perf", "stat", "-e", "task-clock", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _perf_can_sample(), reason="Linux perf is missing or may not "
                    "sample processes here")
def test_a_real_profile_finds_the_scan_loop(tmp_path):
    """The tiny case's forward, sampled for a second: most samples land in Numba's loops,
    and the hottest loop computes (multiplies or FMAs) and takes an exponential."""
    run = subprocess.run([sys.executable, str(SCRIPT), "--case", "tiny", "--seconds", "1",
                          "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "profile_loops_tiny_forward_cpu.json").read_text())
    loops = [r for r in result["loops"] if "body" in r]
    assert loops and sum(r["share_pct"] for r in result["loops"]) > 50
    assert result["outside_numba_pct"] < 50
    assert any(r["mul/FMA"] > 0 and r["exp"] > 0 for r in loops[:3])
    assert "outside Numba's code" in run.stdout
    assert result["ms_per_call"] > 0
    assert loops[0]["ms_per_call"] == pytest.approx(
        loops[0]["share_pct"] / 100 * result["ms_per_call"], rel=1e-3, abs=1e-4)
