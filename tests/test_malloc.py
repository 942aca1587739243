"""ssm_ref._malloc: the process-wide malloc setting the CLI and the training benchmark make."""
import json
import platform
import subprocess
import sys

import pytest

from ssm_ref._malloc import keep_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

STEPS = """
import json, resource, sys
import numpy as np
from ssm_ref._malloc import keep_freed_memory
said = keep_freed_memory() if sys.argv[1] == "keep" else "default"
from ssm_ref.vision.models import build_model
model = build_model("vmamba", img_size=(16, 16), n_classes=4)
x = np.random.default_rng(0).standard_normal((16, 16, 16, 1))
def step():
    logits, cache = model.forward(x, return_cache=True)
    model.backward(np.ones_like(logits), cache)
step()  # the first step grows the heap either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(json.dumps([said, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before]))
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere the call reports 'unchanged'")
def test_training_steps_stop_faulting_pages_in():
    """In fresh processes, three forward/backward steps of a VMamba after a first one: with
    the setting, the freed temporaries are reused instead of faulted in again (a page-fault
    count from getrusage, not a time)."""
    runs = {mode: json.loads(subprocess.run([sys.executable, "-c", STEPS, mode], check=True,
                                            capture_output=True, text=True).stdout)
            for mode in ("default", "keep")}
    assert runs["keep"][0].startswith("kept")
    assert runs["default"][1] > 1000, runs  # glibc's default gives the blocks back every step
    assert runs["keep"][1] * 10 < runs["default"][1], runs


def test_the_answer_says_what_happened():
    said = keep_freed_memory()
    assert said.startswith("kept" if GLIBC else "unchanged:")
