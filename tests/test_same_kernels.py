"""benchmarks/same_kernels.py: the normalization that makes two compilations of the same code
compare equal and any other instruction compare different, the verdicts, and its errors (the
end-to-end run compiles every scan kernel twice, minutes: it is run by hand)."""
from __future__ import annotations

import pytest
from cases import script_module, script_refusal
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "same_kernels.py"

LISTING = """\
\t.text
\t.file\t"<string>"
\t.globl\t_ZN8__main__3fooB2v1E
_ZN8__main__3fooB2v1E:
\t.cfi_startproc
\tsubq\t$5112, %rsp
\tmovq\t%rdi, 2904(%rsp)
.LBB0_3:                                # %for.body
\tvmovups\t(%rax,%rcx,4), %zmm1     # 64-byte Reload
\tvfmadd213ps\t.LCPI0_2(%rip){1to16}, %zmm0, %zmm1
\tcallq\tNRT_MemInfo_alloc_aligned@PLT
\tmovabsq\t$0x7f12ab, %rax
\tjne\t.LBB0_3
"""


@pytest.fixture(scope="module")
def same():
    return script_module(SCRIPT, "same_kernels")


def test_two_compilations_of_the_same_code_normalize_equal(same):
    moved = (LISTING.replace("5112", "5096").replace("2904(", "2896(")
             .replace("LBB0_3", "LBB7_12").replace("LCPI0_2", "LCPI7_0")
             .replace("0x7f12ab", "0x7f99ff").replace("B2v1E", "B2v9E"))
    assert moved != LISTING
    assert same.normalized_asm(moved) == same.normalized_asm(LISTING)
    kept = same.normalized_asm(LISTING)
    assert len(kept) == 7  # the seven instructions; directives, labels, comments dropped
    assert kept[0] == "subq $N, %rsp" and kept[1] == "movq %rdi, S(%rsp)"


@pytest.mark.parametrize("old, new", [
    ("(%rax,%rcx,4), %zmm1", "(%rax,%rdx,4), %zmm1"),  # another register
    ("movq\t%rdi, 2904(%rsp)", "movq\t%rdi, %r12"),  # a spill that became a register
    ("vfmadd213ps", "vfmadd231ps"),  # another instruction
])
def test_another_instruction_or_register_normalizes_different(same, old, new):
    assert same.normalized_asm(LISTING.replace(old, new)) != same.normalized_asm(LISTING)


def test_verdicts(same):
    a = {"k1 (sig)": ["x", "y", "z"], "k2 (sig)": ["x"], "old (sig)": ["x"]}
    b = {"k1 (sig)": ["x", "y", "z"], "k2 (sig)": ["x", "w"], "new (sig)": ["x"]}
    rows, all_same = same.compare(a, b)
    assert dict(rows) == {"k1 (sig)": "same", "k2 (sig)": "1 lines differ (of 1 and 2)",
                          "new (sig)": "only in the working tree",
                          "old (sig)": "only in the revision"}
    assert not all_same
    assert same.compare(a, dict(a)) == ([(k, "same") for k in sorted(a)], True)


@pytest.mark.parametrize("args, message", [
    (["HEAD", "--cases", "huge"], "invalid choice: 'huge'"),
    (["no-such-rev-xyz", "--cases", "tiny"], "no revision 'no-such-rev-xyz'"),
])
def test_bad_arguments_get_one_clear_line(args, message):
    status, stderr = script_refusal(SCRIPT, *args)
    assert status != 0 and message in stderr


def test_short_signature(same):
    from numba import types
    sig = (types.Array(types.float32, 3, "C"), types.boolean, types.UniTuple(types.float32, 8),
           types.Array(types.float64, 5, "A"))
    assert same.short_signature(sig) == ("(float32[3C], bool, UniTuple(float32, 8), "
                                         "float64[5A])")
