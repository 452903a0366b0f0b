"""The counted code of a pgolf run: the generated train_gpt.py, one self-contained file that trains,
packs and evaluates, and the modules it is made of.

    gen = generate(cfg)          # gen.data: the file's bytes; gen.raw_bytes, gen.minified_bytes, gen.form
    code_bytes(backend, cfg)     # len(generate(cfg).data): what a run of cfg counts, whichever backend

The challenge counts only the script. What goes in is computed, never listed:
the torch entry `cuda_train/submission.py` and every pgolf module it imports
(`script_files`, the import graph: every `import` statement, function-level
ones included, except under `if TYPE_CHECKING:`), so a module someone adds to
the training path is carried without touching this file. A run trained by the
MLX backend counts the same script (parity shows both train the same spec).
Each module's source is minified and embedded as a string, served by a small
meta-path importer installed before the entry runs; the run's resolved config
is baked in as the defaults (`baked_config`). The file is the compressed,
self-extracting form (as records count it, PR #1855) when that is smaller.
Every step is a pure function of the sources and the config: same checkout and
config, same bytes.
"""

from __future__ import annotations

import ast
import base64
import lzma
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from pathlib import Path

from shared import __version__
from shared.core.config import Config, TrainConfig, to_toml
from shared.errors import PgolfError

SCRIPT_NAME = "train_gpt.py"
ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "mlx_train", "cuda_train")
BACKEND_PACKAGES = {"mlx": "mlx_train", "torch": "cuda_train"}
SCRIPT_ENTRY = "cuda_train.submission"  # what train_gpt.py runs


def module_file(name: str) -> Path | None:
    """The file of a pgolf module (`shared.core.spec` -> shared/core/spec.py), or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def module_name(f: Path) -> str:
    parts = list(f.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(f: Path, typing: bool = False) -> set[str]:
    """Module names that `f` imports, anywhere in its body (relative imports resolved); those under
    `if TYPE_CHECKING:` only when `typing` (they never run, so a run does not carry them)."""
    me = module_name(f)
    package = me if f.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    tree = ast.parse(f.read_text(encoding="utf-8"), str(f))
    typing_only = set() if typing else {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
                   for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_closure(roots: tuple[Path, ...]) -> tuple[Path, ...]:
    """`roots` and every pgolf module they import, transitively (parent packages included), sorted."""
    missing = [str(f) for f in roots if not f.is_file()]
    if missing:
        raise PgolfError(f"counted code file(s) missing: {missing}; is the checkout complete?")
    todo, seen = list(roots), set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        names = imports(f)
        name = module_name(f)
        names.update(".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1))  # parent packages run too
        todo.extend(g for g in map(module_file, names) if g is not None and g not in seen)
    return tuple(sorted(seen))


@cache
def code_files_cached(backend: str) -> tuple[Path, ...]:
    if backend not in BACKEND_PACKAGES:
        raise PgolfError(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_PACKAGES)}")
    pkg = ROOT / BACKEND_PACKAGES[backend]
    return import_closure((pkg / "__main__.py", pkg / "backend.py"))


def code_files(backend: str) -> list[Path]:
    """The pgolf modules a `python -m <backend package>` training run imports, in a fixed order."""
    return list(code_files_cached(backend))


def script_files() -> list[Path]:
    """The pgolf modules embedded in train_gpt.py: the closure of its entry (`SCRIPT_ENTRY`)."""
    return list(import_closure((ROOT.joinpath(*SCRIPT_ENTRY.split(".")).with_suffix(".py"),)))


def code_bytes(backend: str, cfg: Config | None = None) -> int:
    """Bytes of the counted code of a run of `cfg` (default config when None) trained by `backend`:
    the size of the train_gpt.py that `pgolf record export` writes for it."""
    if backend not in BACKEND_PACKAGES:
        raise PgolfError(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_PACKAGES)}")
    return len(generate(cfg).data)


_LZMA = {"format": lzma.FORMAT_XZ, "check": lzma.CHECK_NONE, "preset": 9 | lzma.PRESET_EXTREME}

# The bootstrap: the embedded modules (name -> (is_package, source)) come first, as M; the config as C.
# Modules get a __file__ beside the script so code that locates itself keeps working, and their
# source goes into linecache (mtime None: never evicted) so tracebacks and `inspect.getsource`
# (torch.compile, Triton) see it.
_BOOT = '''
import importlib.abc,importlib.util,linecache,os,sys
class _Embedded(importlib.abc.MetaPathFinder,importlib.abc.Loader):
    def find_spec(self,name,path=None,target=None):
        if name in M:return importlib.util.spec_from_loader(name,self,is_package=M[name][0])
    def create_module(self,spec):return None
    def exec_module(self,module):
        n=module.__name__;s=M[n][1];f=module.__file__=os.path.join(os.path.dirname(os.path.abspath(__file__)),*n.split('.'))+('/__init__.py' if M[n][0] else '.py')
        linecache.cache[f]=(len(s),None,s.splitlines(True),f)
        exec(compile(s,f,'exec'),module.__dict__)
sys.meta_path.insert(0,_Embedded())
if __name__=='__main__':
    from {entry} import main
    main(C,os.path.getsize(os.path.abspath(__file__)))
'''


@dataclass(frozen=True)
class Script:
    data: bytes            # what train_gpt.py holds (and what counts)
    raw_bytes: int         # the bundle before minifying (sources as written)
    minified_bytes: int    # the bundle after minifying, uncompressed
    form: str              # "self-extracting" or "plain"
    modules: tuple[str, ...]


def baked_config(cfg: Config | None) -> Config:
    """The config a script carries: the run's, with the machine-local parts made the challenge's defaults.

    Data paths become the challenge's layout for the vocabulary (DATA_PATH/TOKENIZER_PATH override them)
    and the seed the reference's default (SEED overrides it), so every seed of one config, trained
    anywhere, shares one script and one counted size."""
    cfg = cfg or Config()
    v = cfg.model.vocab_size
    data = replace(cfg.data, dir=f"./data/datasets/fineweb10B_sp{v}", tokenizer=f"./data/tokenizers/fineweb_{v}_bpe.model")
    return replace(cfg, data=data, train=replace(cfg.train, seed=TrainConfig().seed))


class _StripDocstrings(ast.NodeTransformer):
    def _strip(self, node):
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _strip


def minify(source: str, filename: str = "<source>") -> str:
    """Same program, fewer bytes: docstrings and comments dropped, layout normalised (`ast.unparse`)."""
    tree = _StripDocstrings().visit(ast.parse(source, filename))
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def self_extracting(source: str) -> bytes:
    """`exec` of the lzma-compressed, base85-encoded source: the form records count."""
    blob = base64.b85encode(lzma.compress(source.encode("utf-8"), **_LZMA)).decode("ascii")
    return f'import base64,lzma;exec(lzma.decompress(base64.b85decode("{blob}")))\n'.encode("ascii")


@lru_cache(maxsize=256)
def _module_source(path: Path, mtime_ns: int, size: int, minified: bool) -> str:
    src = path.read_text(encoding="utf-8")
    return minify(src, str(path)) if minified else src


@lru_cache(maxsize=1)
def _files(stamp: tuple) -> tuple[Path, ...]:
    return tuple(script_files())


def _embedded_files() -> tuple[Path, ...]:
    """`script_files()`, recomputed only when a pgolf source file changes (the graph walk parses every module)."""
    stamp = tuple((str(f), f.stat().st_mtime_ns) for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py")))
    return _files(stamp)


def bundle(cfg: Config | None, minified: bool = True) -> str:
    """The script's source: embedded modules, the baked config, the bootstrap."""
    mods = []
    for f in _embedded_files():
        st = f.stat()
        mods.append((module_name(f), f.name == "__init__.py", _module_source(f, st.st_mtime_ns, st.st_size, minified)))
    table = ",".join(f"{name!r}:({pkg},{src!r})" for name, pkg, src in mods)
    head = f"# train_gpt.py generated by pgolf {__version__} (pgolf record export): {len(mods)} modules embedded\n"
    return (head + "M={" + table + "}\n" + f"C={to_toml(baked_config(cfg))!r}\n"
            + _BOOT.format(entry=SCRIPT_ENTRY).lstrip("\n"))


@lru_cache(maxsize=8)
def _generate(config_toml: str) -> Script:
    from shared.core.config import from_toml_text

    cfg = from_toml_text(config_toml)
    raw = bundle(cfg, minified=False)
    small = bundle(cfg)
    packed = self_extracting(small)
    plain = small.encode("utf-8")
    data, form = (packed, "self-extracting") if len(packed) < len(plain) else (plain, "plain")
    names = tuple(module_name(f) for f in _embedded_files())
    return Script(data, len(raw.encode("utf-8")), len(plain), form, names)


def generate(cfg: Config | None) -> Script:
    """train_gpt.py for runs of `cfg` (a pure function of the checkout and the baked config)."""
    return _generate(to_toml(baked_config(cfg)))

