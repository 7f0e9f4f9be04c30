"""Fault injection: ``jopt train`` killed (SIGKILL) at random moments while it checkpoints
every epoch, then resumed. Every resume must continue bitwise or refuse with one line; nothing
half-written may ever be loaded. Slow (about 20 processes): ``pytest -m slow``."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

ARGS = ["train", "--epochs", "60", "--checkpoint-every", "1", "--keep", "2", "--json"]


def jopt(args, env, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "jopt", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_killed_runs_resume_bitwise_or_refuse(tmp_path):
    env = {**os.environ, "JOPT_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("XLA_FLAGS", None)
    reference = jopt(ARGS, env)
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    expected = json.loads(out.strip().splitlines()[-1])["history"]
    ckpt = str(tmp_path / "ckpt")
    rng = random.Random(0)
    started = time.monotonic()
    kills = 0
    while kills < 20 and time.monotonic() - started < 240:
        victim = jopt([*ARGS, "--checkpoint-dir", ckpt, "--resume"], env)
        time.sleep(rng.uniform(0.3, 3.0))
        if victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
            kills += 1
        out, err = victim.communicate(timeout=60)
        if victim.returncode == 0:  # it finished before the kill: start over
            assert json.loads(out.strip().splitlines()[-1])["history"] == expected
            shutil.rmtree(ckpt)
        elif victim.returncode == 2:
            assert err.count("\n") == 1 and "Traceback" not in err, err
        else:  # nothing but our kill may end a run
            assert victim.returncode == -signal.SIGKILL, (victim.returncode, err)
    assert kills >= 10
    final = jopt([*ARGS, "--checkpoint-dir", ckpt, "--resume"], env)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["history"] == expected
