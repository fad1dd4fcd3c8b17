"""Figure files from Vega-Lite specs: SVG, and PNG or PDF made from the SVG; drawn in worker processes, cached.

    with Drawer(Files(formats=("svg", "png")), vl_version="6.4") as drawer:
        drawer.submit(spec, folder / "figures" / "fig1_accuracy")   # returns at once
    # leaving the block waits for every figure and raises the first failure

Drawing (vl-convert's Vega in Deno) is most of a report's time. vl-convert runs one conversion at a time per
process, so figures are drawn by worker processes (`python -m analysis.draw`, one per core: they import only
vl-convert, not the caller's script) while the report computes the next figure's data. Each file is also kept
under ~/.cache/bnsweep/figures ($XDG_CACHE_HOME), named by a hash of the spec (its data inlined), the format and
the vl-convert and Vega-Lite versions: a report whose figure did not change copies the file instead of drawing it.
The cache keeps the most recently used CACHE_BYTES.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bnsweep.errors import UserError

PNG_SCALE = 1.5
CACHE_BYTES = 512 * 2**20
MAX_WORKERS = 4  # each holds a Deno runtime (about 100 MB)


def _png(svg: str) -> bytes:
    import vl_convert as vlc

    return vlc.svg_to_png(svg, scale=PNG_SCALE)


def _pdf(svg: str) -> bytes:
    import vl_convert as vlc

    return vlc.svg_to_pdf(svg)


# format -> its bytes from the SVG (one Vega run per figure, whatever the formats)
FORMATS: dict[str, Callable[[str], bytes]] = {"svg": str.encode, "png": _png, "pdf": _pdf}
DEFAULT_FORMATS = ("svg",)  # vector, for papers; report.html draws its own charts; PNG doubles the drawing time


def parse_formats(text: str) -> tuple[str, ...]:
    """'svg,png' -> ('svg', 'png'); 'none' -> () (report.html and the .vl.json specs only)."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if names == ("none",):
        return ()
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise UserError(f"--formats {text!r}: give comma-separated formats from {', '.join(FORMATS)}, or none")
    return names


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bnsweep" / "figures"


def _key(spec_json: str, fmt: str, vl_version: str) -> str:
    import vl_convert as vlc

    head = f"vl-convert {vlc.__version__}\0vega-lite {vl_version}\0{fmt}\0png scale {PNG_SCALE}\0"
    return hashlib.sha256(head.encode() + spec_json.encode()).hexdigest()


def _write(path: Path, data: bytes) -> None:
    """Replace `path` whole: a reader never sees half a figure."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def keep(cache: Path, name: str, data: bytes) -> None:
    """Put `data` in the cache folder as `name`, whole; a read-only or full cache is passed over (it only saves time)."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _write(cache / name, data)
    except OSError:
        pass


def draw(spec_json: str, stem: str, formats: tuple[str, ...], cache: str | None, vl_version: str) -> None:
    """Draw one figure to `stem`.<format> for each format, and keep each file in `cache` (runs in a worker)."""
    import vl_convert as vlc

    svg = vlc.vegalite_to_svg(spec_json, vl_version=vl_version)
    for fmt in formats:
        data = FORMATS[fmt](svg)
        _write(Path(f"{stem}.{fmt}"), data)
        if cache is not None:
            keep(Path(cache), f"{_key(spec_json, fmt, vl_version)}.{fmt}", data)


def serve() -> None:
    """A worker process: one job (draw's arguments, as JSON) per line on stdin; answers `ok` or one error line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the report's to handle: it stops the workers
    import vl_convert  # noqa: F401  (loaded while the report computes its first figure)

    for line in sys.stdin:
        try:
            draw(*json.loads(line))
            reply = "ok"
        except Exception as e:  # reported by the report process, which raises it
            reply = f"{type(e).__name__}: {e}".replace("\n", " ")
        print(reply, flush=True)


@dataclass(frozen=True)
class Files:
    """Which figure files a report writes; where their cache is (None: no cache); how many processes draw them
    (None: one per core, at most MAX_WORKERS; 1: in the report's own process, one figure after another)."""

    formats: tuple[str, ...] = DEFAULT_FORMATS
    cache: Path | None = field(default_factory=lambda: cache_dir())
    processes: int | None = None

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise UserError(f"figure formats {', '.join(map(repr, bad))}: allowed {', '.join(FORMATS)}")


def workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


class Drawer:
    """Draws submitted figures in worker processes (in this one when `processes` is 1), or copies them from the cache."""

    def __init__(self, files: Files, vl_version: str):
        self.formats, self.cache, self.vl_version = files.formats, files.cache, vl_version
        self.processes = workers() if files.processes is None else files.processes
        self.jobs: queue.Queue = queue.Queue()
        self.threads: list[threading.Thread] = []
        self.procs: list[subprocess.Popen] = []
        self.errors: list[str] = []
        self.cached = 0  # files copied from the cache

    def submit(self, spec: dict, stem: Path) -> None:
        """Write `stem`.<format> for each format: from the cache, or drawn (in a worker) from `spec`."""
        if not self.formats:
            return
        spec_json = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        if self.cache is not None and self._from_cache(spec_json, stem):
            return
        job = (spec_json, str(stem), self.formats, None if self.cache is None else str(self.cache), self.vl_version)
        if self.processes == 1:
            draw(*job)
            return
        if not self.threads:
            self._start()
        self.jobs.put(job)

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[1])  # where `analysis` is imported from here
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        for _ in range(self.processes):
            p = subprocess.Popen([sys.executable, "-m", "analysis.draw"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, env=env)
            self.procs.append(p)
            self.threads.append(threading.Thread(target=self._feed, args=(p,), daemon=True))
            self.threads[-1].start()

    def _feed(self, p: subprocess.Popen) -> None:
        """Hand jobs to worker `p` one at a time until the queue's end marker (None)."""
        while (job := self.jobs.get()) is not None:
            try:
                p.stdin.write(json.dumps(job) + "\n")
                p.stdin.flush()
                reply = p.stdout.readline().strip()
            except OSError as e:
                reply = f"{type(e).__name__}: {e}"
            if reply != "ok":
                self.errors.append(f"drawing {Path(job[1]).name}: {reply or f'the worker exited with status {p.wait()}'}")
        p.stdin.close()

    def _from_cache(self, spec_json: str, stem: Path) -> bool:
        """Copy every format of this figure from the cache, if the cache holds them all."""
        hits = [self.cache / f"{_key(spec_json, fmt, self.vl_version)}.{fmt}" for fmt in self.formats]
        if not all(h.exists() for h in hits):
            return False
        try:
            for fmt, hit in zip(self.formats, hits):
                tmp = stem.with_name(f".{stem.name}.{fmt}.{os.getpid()}.tmp")
                shutil.copyfile(hit, tmp)
                tmp.replace(Path(f"{stem}.{fmt}"))
                os.utime(hit)  # recently used: kept by prune()
        except OSError:  # pruned by another report meanwhile: draw it
            return False
        self.cached += len(hits)
        return True

    def __enter__(self) -> Drawer:
        return self

    def __exit__(self, kind, *_) -> None:
        """Wait for every figure (or, leaving on an exception, stop the workers); raise the first drawing error."""
        if kind is not None:
            for p in self.procs:
                p.kill()
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join()
        for p in self.procs:
            p.wait()
        if kind is None and self.errors:
            raise RuntimeError(self.errors[0])
        if self.cache is not None and kind is None:
            prune(self.cache)


def prune(cache: Path, keep: int = CACHE_BYTES) -> None:
    """Delete the least recently used files of `cache` until it holds at most `keep` bytes."""
    try:
        files = sorted((p.stat().st_mtime, p.stat().st_size, p) for p in cache.iterdir() if not p.name.startswith("."))
    except OSError:
        return
    total = sum(size for _, size, _ in files)
    for _, size, p in files:
        if total <= keep:
            break
        p.unlink(missing_ok=True)
        total -= size


if __name__ == "__main__":
    serve()
