"""MLX runtime set-up: a fast CPU BLAS on Linux, the compile cache, device and dtype.

Imported by `mlx_train/__init__.py`, so it runs before anything in this
package imports `mlx.core`. That order matters: the Linux `mlx[cpu]` wheel
leaves `cblas_sgemm`/`cblas_dgemm`/`cblas_cgemm` undefined and resolves them
from whatever library is loaded globally first; its bundled reference BLAS
runs an fp32 matmul at ~7 GFLOP/s. `scipy-openblas32` (PyPI) exports the same
routines under a `scipy_` prefix, so a ten-line C shim that forwards the three
unprefixed names to them, loaded with RTLD_GLOBAL before the first
`import mlx.core`, gives ~230 GFLOP/s (docs/FACTS.md). Loading it later
changes nothing.

The shim is compiled with gcc on first use into the cache folder
(`$PGOLF_CACHE`, default `~/.cache/pgolf`), named by a hash of its source and
the OpenBLAS path, written to a private temp file and renamed into place:
concurrent first runs each build their own copy and the last rename wins,
with no lock and never a half-written library. `PGOLF_MLX_BLAS=off` skips it
(for benchmarks); products with m*n*k below `PGOLF_BLAS_SMALL_GEMM`
(default 2**27) run single-threaded; a missing gcc or scipy-openblas32 falls back with a warning.

`mx.compile` on CPU runs a C++ compiler at run time and caches the kernels
under `$TMPDIR/mlx/<version>/cpu`; when TMPDIR is unset we point it into the
cache folder so the ~10 s cold compile happens once per machine, not per boot.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

SHIM_SOURCE = r"""
/* Forward the unprefixed CBLAS names MLX's CPU backend calls to scipy-openblas32.
   Small products run on one thread: MLX issues attention as many small batched
   GEMMs, and waking OpenBLAS's thread pool for each costs more than the product. */
typedef int blasint;
extern void scipy_openblas_set_num_threads(int);
extern int scipy_openblas_get_num_threads(void);
extern void scipy_cblas_sgemm(int, int, int, blasint, blasint, blasint, float, const float *, blasint,
                              const float *, blasint, float, float *, blasint);
extern void scipy_cblas_dgemm(int, int, int, blasint, blasint, blasint, double, const double *, blasint,
                              const double *, blasint, double, double *, blasint);
extern void scipy_cblas_cgemm(int, int, int, blasint, blasint, blasint, const void *, const void *, blasint,
                              const void *, blasint, const void *, void *, blasint);
static int full_threads = 0, current = 0;
long long pgolf_small_gemm = 1LL << 27; /* m*n*k below this: one thread (set from Python) */
static void pick_threads(blasint m, blasint n, blasint k) {
    if (full_threads == 0) { full_threads = scipy_openblas_get_num_threads(); current = full_threads; }
    int want = ((long long)m * n * k < pgolf_small_gemm) ? 1 : full_threads;
    if (want != current) { scipy_openblas_set_num_threads(want); current = want; }
}
void cblas_sgemm(int o, int ta, int tb, blasint m, blasint n, blasint k, float alpha, const float *a, blasint lda,
                 const float *b, blasint ldb, float beta, float *c, blasint ldc) {
    pick_threads(m, n, k);
    scipy_cblas_sgemm(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void cblas_dgemm(int o, int ta, int tb, blasint m, blasint n, blasint k, double alpha, const double *a, blasint lda,
                 const double *b, blasint ldb, double beta, double *c, blasint ldc) {
    pick_threads(m, n, k);
    scipy_cblas_dgemm(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void cblas_cgemm(int o, int ta, int tb, blasint m, blasint n, blasint k, const void *alpha, const void *a, blasint lda,
                 const void *b, blasint ldb, const void *beta, void *c, blasint ldc) {
    pick_threads(m, n, k);
    scipy_cblas_cgemm(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
"""

# What the process ended up with; read by the log header (`blas_info()`).
_BLAS = "not configured"
_LIBS: list[ctypes.CDLL] = []  # keep the loaded libraries alive


def cache_dir() -> Path:
    """The persistent pgolf cache: `$PGOLF_CACHE`, else `~/.cache/pgolf`."""
    root = os.environ.get("PGOLF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pgolf")
    return Path(root)


def _openblas_dir() -> Path | None:
    try:
        import scipy_openblas32
    except ImportError:
        return None
    lib = Path(scipy_openblas32.get_lib_dir())
    return lib if (lib / "libscipy_openblas.so").is_file() else None


def _build_shim(lib_dir: Path, out_dir: Path) -> Path:
    """Compile the shim once per (source, OpenBLAS path); atomic and race-safe without a lock."""
    key = hashlib.sha256((SHIM_SOURCE + str(lib_dir.resolve())).encode()).hexdigest()[:16]
    target = out_dir / f"pgolf_blas_shim_{key}.so"
    if target.is_file():
        return target
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("no gcc/cc on PATH to build the BLAS shim")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Each process builds into its own temp names; the rename is atomic, so a
    # racing process either sees no file or a complete one.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".shim-") as tmp:
        src, obj = Path(tmp) / "shim.c", Path(tmp) / "shim.so"
        src.write_text(SHIM_SOURCE)
        cmd = [gcc, "-O2", "-shared", "-fPIC", str(src), "-o", str(obj), f"-L{lib_dir}", "-lscipy_openblas",
               f"-Wl,-rpath,{lib_dir}"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"gcc failed: {res.stderr.strip().splitlines()[-1:] or res.returncode}")
        os.replace(obj, target)
    return target


def setup_blas() -> str:
    """Load the OpenBLAS shim globally (Linux only); return a description of the BLAS in use."""
    global _BLAS
    if "mlx.core" in sys.modules:
        _BLAS = "unchanged (mlx.core was imported before mlx_train.runtime)"
        return _BLAS
    if platform.system() != "Linux":
        _BLAS = "Accelerate/Metal (macOS build)" if platform.system() == "Darwin" else "MLX default"
        return _BLAS
    if os.environ.get("PGOLF_MLX_BLAS", "").lower() in ("off", "0", "false", "no"):
        _BLAS = "MLX bundled reference BLAS (PGOLF_MLX_BLAS=off)"
        return _BLAS
    lib_dir = _openblas_dir()
    if lib_dir is None:
        warnings.warn("scipy-openblas32 is not installed: MLX's CPU matmul will be ~30x slower "
                      "(pip install scipy-openblas32)", stacklevel=2)
        _BLAS = "MLX bundled reference BLAS (scipy-openblas32 missing)"
        return _BLAS
    try:
        shim = _build_shim(lib_dir, cache_dir() / "blas")
        lib = ctypes.CDLL(str(shim), mode=ctypes.RTLD_GLOBAL)
        small = os.environ.get("PGOLF_BLAS_SMALL_GEMM")  # m*n*k threshold for single-threaded GEMM
        if small:
            ctypes.c_longlong.in_dll(lib, "pgolf_small_gemm").value = int(small)
        _LIBS.append(lib)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        warnings.warn(f"could not build/load the OpenBLAS shim ({e}); MLX's CPU matmul will be slow", stacklevel=2)
        _BLAS = f"MLX bundled reference BLAS (shim failed: {e})"
        return _BLAS
    _BLAS = f"scipy-openblas32 via shim {shim}"
    return _BLAS


def setup_compile_cache() -> None:
    """Give mx.compile's CPU kernel cache a persistent home when TMPDIR is unset."""
    if os.environ.get("TMPDIR") or platform.system() != "Linux":
        return
    tempfile.gettempdir()  # pin Python's own temp dir first: only MLX's compiler should move
    path = cache_dir() / "mlx-kernels"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    os.environ["TMPDIR"] = str(path)


def blas_info() -> str:
    return _BLAS


def default_dtype_name(requested: str) -> str:
    """`train.compute_dtype`: auto means bf16 on the Metal GPU, fp32 on the CPU."""
    if requested != "auto":
        return requested
    import mlx.core as mx

    return "bfloat16" if mx.default_device() == mx.gpu and mx.metal.is_available() else "float32"


def peak_memory_bytes() -> int:
    """MLX's peak allocation (Metal), or the process's peak resident set where MLX reports none (CPU)."""
    import resource

    import mlx.core as mx

    peak = int(mx.get_peak_memory()) if hasattr(mx, "get_peak_memory") else 0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return peak or int(rss)


def device_name() -> str:
    import mlx.core as mx

    dev = mx.default_device()
    if dev == mx.gpu:
        return "gpu (Metal)"
    return f"cpu ({os.cpu_count()} cores)"


setup_compile_cache()
setup_blas()
