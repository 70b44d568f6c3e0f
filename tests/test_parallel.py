"""map_processes: results in input order, the first item in this process (it compiles numba code once, before any
worker could race on the on-disk cache), the rest in forked workers."""
import os

from lofi_lora.core.parallel import map_processes


def _pid_and_square(x):
    return os.getpid(), x * x


def test_order_kept_first_item_here_rest_in_workers():
    out = map_processes(_pid_and_square, range(6), workers=2, desc="t")
    assert [sq for _, sq in out] == [0, 1, 4, 9, 16, 25]
    assert out[0][0] == os.getpid()
    assert all(pid != os.getpid() for pid, _ in out[1:])


def test_one_worker_runs_everything_here():
    out = map_processes(_pid_and_square, [3, 4], workers=1, desc="t")
    assert out == [(os.getpid(), 9), (os.getpid(), 16)]


def test_librosa_numba_code_is_loaded_here_before_forking(monkeypatch):
    """A first item that never reaches librosa (a quarantined track) must not leave the workers to compile or load
    librosa's numba code at once: a forked worker segfaulted in the beat tracker that way."""
    from lofi_lora.core import parallel

    calls = []
    monkeypatch.setattr(parallel.librosa_guard, "load", lambda: calls.append(os.getpid()))
    map_processes(_pid_and_square, range(4), workers=2, desc="t")
    assert calls == [os.getpid()]
    map_processes(_pid_and_square, range(4), workers=1, desc="t")
    assert calls == [os.getpid()]  # no pool, nothing to warm



def test_librosa_is_imported_under_the_machine_wide_lock(tmp_path):
    """numba#10128: two processes compiling librosa's gufuncs at once can corrupt the on-disk cache (a CI worker
    segfaulted in the peak picker). While another process holds the lock, `load` waits and imports nothing."""
    import subprocess
    import sys
    import time

    from filelock import FileLock

    from lofi_lora.core import librosa_guard

    code = ("import sys; from lofi_lora.core import librosa_guard; print('librosa' in sys.modules, flush=True); "
            "librosa_guard.load(); print('librosa' in sys.modules, flush=True)")
    with FileLock(str(librosa_guard.LOCK)):
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "False"
        time.sleep(3)  # ample for `import librosa` on a warm cache (about 1 s here)
        assert child.poll() is None  # still waiting on the lock
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0 and out.strip() == "True"
