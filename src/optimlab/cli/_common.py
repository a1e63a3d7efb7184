"""What every subcommand shares: a parser whose errors are one line, argument types that name
the bad value and the fix, the output-folder check, and the run's environment (versions,
hardware) for ``run.json`` and the report."""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import textwrap

PROG = "optimlab"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (exit 2), pointing at
    ``--help`` instead of printing the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; argument help wrapped at spaces only, so that
    ``lr=1e-3`` and ``sgd:lr=0.1,momentum=0.9`` are never cut at their hyphens."""

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


def _number(kind, text: str, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def positive_int(text: str) -> int:
    """An ``int`` >= 1 (seeds, epochs, workers, batch size, steps)."""
    v = _number(int, text, "a whole number")
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not allowed: give a whole number of at least 1")
    return v


def positive_float(text: str) -> float:
    """A finite ``float`` > 0 (learning rates)."""
    v = _number(float, text, "a number")
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"{v:g} is not allowed: give a number above 0, e.g. 1e-3")
    return v


def unit_interval(text: str) -> float:
    """A ``float`` in [0, 1)."""
    v = _number(float, text, "a number")
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"{v:g} is not allowed: give a number from 0 up to (not including) 1")
    return v


def fraction(text: str) -> float:
    """A ``float`` in (0, 1]."""
    v = _number(float, text, "a number")
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"{v:g} is not allowed: give a fraction above 0, at most 1, e.g. 0.9")
    return v


def add_task_argument(p: argparse.ArgumentParser) -> None:
    """``--task``: one built-in task name or the user's own ``module:function``."""
    p.add_argument("--task", default="digits-mlp", help="task name (default digits-mlp; see `optimlab tasks`), or your own: module:function, "
                        "a function returning optimlab.lab.Task.from_data(...)")


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    """``--executor`` and ``--ray-address``: where the runs execute."""
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: a process pool on this machine (default); ray: each run a Ray task, on a local Ray "
                        "instance or the cluster of --ray-address (pip install 'optimlab[ray]')")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="with --executor ray: the cluster to run on, as ray.init(address=ADDR) takes it (auto, "
                        "HOST:6379, ray://HOST:10001); default $RAY_ADDRESS, else a new local Ray instance")


def executor_from_args(args):
    """The executor ``--executor``/``--ray-address`` ask for (``None``: the local pool); a
    ``ValueError`` for an address without ``--executor ray`` or Ray not installed."""
    if args.ray_address is not None and args.executor != "ray":
        raise ValueError(f"--ray-address {args.ray_address} needs --executor ray")
    if args.executor != "ray":
        return None
    from ..lab.executors import RayExecutor

    try:
        return RayExecutor(args.ray_address)
    except ImportError as e:
        raise ValueError(str(e)) from None


def help_texts(doc: str) -> dict:
    """``description`` and ``epilog`` (the examples) for ``add_parser`` from a subcommand
    module's docstring: its first paragraph without reST markup, and its indented lines."""
    first, _, rest = doc.strip().partition("\n\n")
    description = " ".join(re.sub(r"``([^`]*)``:?\s*", "", first, count=1).replace("``", "").split())
    description = textwrap.fill(description[:1].upper() + description[1:], 79)
    examples = textwrap.dedent("\n".join(line for line in rest.splitlines() if line.startswith("    ")))
    return {"description": description, "epilog": "examples:\n" + textwrap.indent(examples, "  ") if examples else None,
            "formatter_class": HelpFormatter}


def fail(command: str, error: BaseException | str) -> int:
    """Print ``optimlab COMMAND: error: ...`` (one line, the exception's own message) and
    return the exit status for a user's mistake, 2."""
    if isinstance(error, BaseException):
        error = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    print(f"{PROG} {command}: error: {' '.join(str(error).split())}", file=sys.stderr)
    return 2


def writable_dir(path: str, option: str = "--out") -> str:
    """Create ``path`` if needed and check that a file can be written there; a
    ``ValueError`` naming the folder and the fix otherwise."""
    if not path or not path.strip():
        raise ValueError(f"{option} is empty: give a folder, e.g. {option} runs/mine")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".optimlab-write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"cannot write to {option} {path!r} ({e.strerror or e}); choose a folder you can write to") \
            from None
    return path


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Versions and hardware, as recorded with every comparison."""
    import numpy
    import torch

    from .. import __version__

    return {
        "versions": {"optimlab": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
                     "python": platform.python_version()},
        "hardware": {"cpu": _cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "machine": platform.machine(), "platform": platform.platform()},
    }
