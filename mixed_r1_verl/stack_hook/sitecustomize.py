"""Loaded at start-up by every Python process of a run that `mixed_r1_verl.process_watch` watches (this
folder comes first on the run's PYTHONPATH): on SIGUSR1 the process writes the stacks of all its
threads to `$MIXED_R1_STACKS_DIR/<pid>.txt`, after a first line naming the interpreter. faulthandler
answers the signal from C, so a process blocked in a CUDA call, a lock or a socket answers too.
Standard library only; a failure here never stops the process. The sitecustomize module this one
hides, if there is one, runs after it."""

import faulthandler
import importlib.util
import os
import signal
import sys

STACKS_DIR_ENV = "MIXED_R1_STACKS_DIR"
_HOOK_DIR = os.path.dirname(os.path.abspath(__file__))
# faulthandler writes to the file's descriptor, which must stay open for the life of the process.
_stack_files = []


def _arm() -> None:
    stacks_dir = os.environ.get(STACKS_DIR_ENV)
    if not stacks_dir:
        return
    try:
        stack_file = open(os.path.join(stacks_dir, f"{os.getpid()}.txt"), "w")
        # The interpreter, so that a forked child that then exec'd another program is never signalled.
        stack_file.write(os.readlink("/proc/self/exe") + "\n")
        stack_file.flush()
        faulthandler.register(signal.SIGUSR1, file=stack_file, all_threads=True, chain=False)
    except (OSError, RuntimeError, ValueError):
        return
    _stack_files.append(stack_file)


def _run_hidden_sitecustomize() -> None:
    for entry in sys.path:
        folder = os.path.abspath(entry or os.curdir)
        path = os.path.join(folder, "sitecustomize.py")
        if folder != _HOOK_DIR and os.path.isfile(path):
            spec = importlib.util.spec_from_file_location("_hidden_sitecustomize", path)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


_arm()
# A forked child (a dataloader worker, a multiprocessing pool) answers in a file of its own.
os.register_at_fork(after_in_child=_arm)
_run_hidden_sitecustomize()
