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
is baked in as the defaults (`baked_config`). Before minifying, the script
leaves out what a pod run never executes (shared/record/shake.py): the
branches the baked config decides, the command line's comforts (`if not
shared.SCRIPT:` blocks: checkpoints, resume, Ctrl-C handling, progress bars,
provenance), and every error message but the entry's (a raise keeps its line
number, which the entry turns into `error: <pgolf file>:<line>`). The file is the compressed,
self-extracting form (as records count it, PR #1855) when that is smaller.
Every step is a pure function of the sources and the config: same checkout and
config, same bytes.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from pathlib import Path

from shared.core.config import Config, TrainConfig, to_dict, to_toml
from shared.errors import PgolfError

SCRIPT_NAME = "train_gpt.py"
ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "mlx_train", "cuda_train")
BACKEND_PACKAGES = {"mlx": "mlx_train", "torch": "cuda_train"}
SCRIPT_ENTRY = "cuda_train.submission"  # what train_gpt.py runs
# Arguments train_gpt.py always passes (cuda_train/submission.py): the branches they rule out are left out.
FOLDED = {("shared.run.loop", "run_loop"): {"resume": False, "hooks": None}, ("shared.core.config", "from_toml_text"): {"CHECKED": False}}
# Config branches are decided by the baked config (shake.fold_config), except on keys the environment
# overrides (cuda_train/submission.py ENV_KEYS); of those, only these switches are decided, and the script
# then refuses an override that changes them.
ENV_FOLDABLE = {"train.val_every"}


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
    return tree_imports(ast.parse(f.read_text(encoding="utf-8"), str(f)), module_name(f), f.name == "__init__.py",
                        typing)


def _base(me: str, is_pkg: bool, level: int, module: str) -> str:
    """The module an ImportFrom in module `me` names (relative levels resolved)."""
    if not level:
        return module
    package = me if is_pkg else me.rpartition(".")[0]
    anchor = package.split(".")[: len(package.split(".")) - level + 1]
    return ".".join([*anchor, module] if module else anchor)


def tree_imports(tree: ast.AST, me: str, is_pkg: bool, typing: bool = False) -> set[str]:
    out: set[str] = set()
    typing_only = set() if typing else {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                                        and _is_type_checking(node.test) for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _base(me, is_pkg, node.level, node.module or "")
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



# The bootstrap: the embedded modules (name -> (is_package, source)) come first, as M; the config as C
# (section -> key -> value, where not the default); F: the keys whose other values' code was left out (key -> baked value).
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
    main(C,os.path.getsize(os.path.abspath(__file__)),F)
'''


@dataclass(frozen=True)
class Script:
    data: bytes            # what train_gpt.py holds (and what counts)
    raw_bytes: int         # the bundle before minifying (sources as written)
    minified_bytes: int    # the bundle after minifying, uncompressed
    form: str              # "self-extracting" or "plain"
    modules: tuple[str, ...]
    wrapper: str = ""      # the module that decompresses the self-extracting file ("zpaq"), else ""


def baked_config(cfg: Config | None) -> Config:
    """The config a script carries: the run's, with the machine-local parts made the challenge's defaults.

    Data paths become the challenge's layout for the vocabulary (DATA_PATH/TOKENIZER_PATH override them)
    and the seed the reference's default (SEED overrides it), so every seed of one config, trained
    anywhere, shares one script and one counted size."""
    cfg = cfg or Config()
    v = cfg.model.vocab_size
    data = replace(cfg.data, dir=f"./data/datasets/fineweb10B_sp{v}", tokenizer=f"./data/tokenizers/fineweb_{v}_bpe.model")
    return replace(cfg, data=data, train=replace(cfg.train, seed=TrainConfig().seed))


def minify(source: str, filename: str = "<source>", keep: set[str] | None = None) -> str:
    """Same program, fewer bytes: python-minifier (pinned in pyproject.toml, so the same checkout gives
    the same script) drops docstrings, comments, annotations and layout, and renames locals; with `keep`
    (the names other modules use) it renames this module's other globals too."""
    import python_minifier

    return python_minifier.minify(source, filename, rename_globals=keep is not None,
                                  preserve_globals=sorted(keep or ()), hoist_literals=False,
                                  remove_literal_statements=True, rename_locals=True) + "\n"


def source_literal(src: str) -> str:
    """A triple-quoted literal whose value is `src`: newlines and quotes stay as they are (a plain repr
    escapes every one: 1-2% larger compressed), only backslashes, a run of three quotes, a closing
    quote and carriage returns are escaped."""
    body = src.replace("\\", "\\\\").replace("\r", "\\r").replace('"""', '\\"\\"\\"')
    return '"""' + (body[:-1] + '\\"' if body.endswith('"') else body) + '"""'


CODING = b"# coding:latin1\n"  # PEP 263's shortest spelling: the file's bytes are latin-1, one char per byte
_ESCAPES = {0x5C: b"\\\\", 0x0D: b"\\r"}


def latin1_literal(blob: bytes) -> str:
    """A triple-quoted str literal whose latin-1 encoding is `blob`, for a file declared latin-1: each
    byte stands for itself (newlines and double quotes included) but backslash, carriage return (a
    source's line ends are normalised), NUL (no source may hold one), the third quote of a run of three
    single quotes and a single quote before the closing ones, escaped."""
    out, run, tail = bytearray(b"'''"), 0, len(blob.rstrip(b"'"))   # quotes from `tail` on meet the closing ones
    for i, b in enumerate(blob):
        if b == 0x27:
            run = 0 if run == 2 or i >= tail else run + 1   # run: unescaped quotes just written
            out += b"'" if run else b"\\'"
            continue
        run = 0
        if b in _ESCAPES:
            out += _ESCAPES[b]
        elif b == 0:
            out += b"\\x00" if i + 1 < len(blob) and 0x30 <= blob[i + 1] <= 0x37 else b"\\0"
        else:
            out.append(b)
    return (out + b"'''").decode("latin-1")


# The wrapper's compressor: ZPAQ level 5 (context mixing, through the `zpaq` package, a pgolf dependency pinned
# like brotli: the bytes depend on the build) measured 15-17% below brotli-11 (the records' wrapper, PR #1855),
# bz2 and lzma on every config (BENCHMARKS.md, benchmarks/script_encoding.py). One thread: one block, and the
# same bytes on every machine (more threads split the input by the core count).
WRAPPER, WRAPPER_PIN = "zpaq", "zpaq==0.3.7"


def _compress(raw: bytes) -> bytes:
    try:
        import zpaq
    except ImportError:
        raise PgolfError(f"train_gpt.py's compressed form needs the `zpaq` package, which is not installed: "
                         f"pip install {WRAPPER_PIN} (a pgolf dependency; the script's bytes depend on it)") from None
    return zpaq.compress(raw, level=5, threads=1, hints=False)


def self_extracting(source: str) -> tuple[bytes, str]:
    """`exec` of the compressed source, held raw in a latin-1 string literal (a quarter smaller than base85);
    and the compressor's module."""
    lit = latin1_literal(_compress(source.encode("utf-8")))
    return CODING + f"import {WRAPPER};exec({WRAPPER}.decompress({lit}.encode('latin1')))\n".encode("latin-1"), WRAPPER


@lru_cache(maxsize=1)
def _parsed(stamp: tuple) -> tuple[tuple[str, bool, str], ...]:
    """(module, is_package, source) of every module the entry reaches (the import graph)."""
    return tuple((module_name(f), f.name == "__init__.py", f.read_text(encoding="utf-8")) for f in script_files())


def _sources() -> tuple[tuple[str, bool, str], ...]:
    """`_parsed`, recomputed only when a pgolf source file changes (the graph walk parses every module)."""
    stamp = tuple((str(f), f.stat().st_mtime_ns) for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py")))
    return _parsed(stamp)


def _env_keys(tree: ast.Module) -> set[str]:
    """The config keys the entry lets the environment override (its `ENV_KEYS`, read from its source)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ENV_KEYS" for t in node.targets):
            return set(ast.literal_eval(node.value).values())
    return set()


def _prepared(mods: tuple[tuple[str, bool, str], ...]) -> tuple[dict[str, ast.Module], set[str], set[str]]:
    """The modules parsed, with what no config decides already folded (docstrings, `shared.SCRIPT`, terse
    raises, `FOLDED`); the keys the environment may override (the entry's `ENV_KEYS`); the keys some code
    changes with `replace(...)` (they hold other values there: never decided)."""
    from shared.record import shake as sh

    trees = {name: sh.strip_docstrings(ast.parse(src, name)) for name, _, src in mods}
    for name, tree in trees.items():
        sh.fold_module(tree, {"SCRIPT": True})   # shared.SCRIPT: what the command line has and the script leaves out
        if name != SCRIPT_ENTRY:  # the entry's messages (the environment, the run folder) stay whole
            sh.terse_raises(tree)
    for (module, function), known in FOLDED.items():
        sh.fold(trees[module], function, known)
    changed = {k.arg for t in trees.values() for n in ast.walk(t) if isinstance(n, ast.Call)
               and isinstance(n.func, ast.Name) and n.func.id == "replace" for k in n.keywords}
    return trees, _env_keys(trees[SCRIPT_ENTRY]), changed


def _foldable(section: str, key: str, env: set[str], changed: set[str]) -> bool:
    """Whether the baked config may decide `section.key`'s branches: not data, not a key some code replaces,
    not one the environment overrides (but the switches of `ENV_FOLDABLE`)."""
    name = f"{section}.{key}"
    return key not in changed and section != "data" and (name not in env or name in ENV_FOLDABLE)


def _shaken(mods: tuple[tuple[str, bool, str], ...], cfg: Config,
            reads: dict | None = None) -> tuple[list[tuple[str, bool, ast.Module]], dict]:
    """The modules after folding the branches the baked config decides and tree-shaking
    (shared/record/shake.py), less those the shaken entry no longer reaches; and the environment-overridable
    keys that decided a branch (key -> baked value: the script refuses another value). `reads` collects what
    the folds relied on of the config (`shake.fold_config`): the result depends on the config through it alone."""
    from shared.record import shake as sh

    trees, env, changed = _prepared(mods)

    def foldable(section: str, key: str) -> bool:
        return _foldable(section, key, env, changed)

    used: set[str] = set()
    for tree in trees.values():
        used |= sh.fold_config(tree, cfg, foldable, reads)
        sh.fold_constants(tree)
        sh.drop_unused_inner(tree)
    sh.fold_attributes(trees)
    is_pkg = {name: pkg for name, pkg, _ in mods}
    def package_of(me: str, level: int, module: str) -> str:
        return _base(me, is_pkg[me], level, module)

    used |= sh.fold_arguments(trees, cfg, foldable, package_of, {"main"}, reads)
    sh.fold_attributes(trees)   # again: the code that set them otherwise may be gone now
    for _ in range(2):   # tidying leaves parameters unread; dropping them leaves locals unread
        for tree in trees.values():
            sh.tidy(tree)
        if not sh.drop_unused_params(trees, package_of):
            break
    todo, seen = [SCRIPT_ENTRY], set()
    while todo:
        me = todo.pop()
        if me in seen or me not in trees:
            continue
        seen.add(me)
        todo += tree_imports(trees[me], me, is_pkg[me])
        todo += [".".join(me.split(".")[:i]) for i in range(1, me.count(".") + 1)]
    left_out = {k: getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in sorted(used & env)}
    return [(name, is_pkg[name], trees[name]) for name, _, _ in mods if name in seen], left_out


def _changed(cfg: Config) -> dict:
    """The config as section -> key -> value, only where it differs from the defaults (which the script holds)."""
    base = to_dict(Config())
    out = {s: {k: v for k, v in table.items() if base[s][k] != v} for s, table in to_dict(cfg).items()}
    return {s: table for s, table in out.items() if table}


def bundle(cfg: Config | None, minified: bool = True) -> tuple[str, tuple[str, ...]]:
    """The script's source (embedded modules, the baked config, the bootstrap) and its modules' names."""
    left_out: dict = {}
    if minified:
        mods, left_out = _minified_modules(baked_config(cfg))
    else:
        mods = list(_sources())
    # in reverse name order: the compressed file measured 60-150 bytes smaller than in name or import order
    table = ",".join(f"{name!r}:({pkg},{source_literal(src)})" for name, pkg, src in reversed(mods))
    return ("M={" + table + "}\n" + f"C={_changed(baked_config(cfg))!r}\nF={left_out!r}\n"
            + _BOOT.format(entry=SCRIPT_ENTRY).lstrip("\n")), tuple(m[0] for m in mods)


_MODULES: list[tuple[tuple, dict, tuple[list[tuple[str, bool, str]], dict]]] = []


def _minified_modules(cfg: Config) -> tuple[list[tuple[str, bool, str]], dict]:
    """(module, is_package, minified source) of the shaken modules and `_shaken`'s left-out keys, remembered
    with what the folds relied on of the config: a config that agrees on it gets the same modules (runs that
    differ in steps, time, batch or seed, in a key no kept code decides on, or in a count only compared with
    zero: computed once)."""
    from shared.record.shake import agrees, mentioned

    sources = _sources()
    hit = next((result for src, reads, result in _MODULES if src is sources and agrees(cfg, reads)), None)
    if hit is not None:
        mods, keys = hit
    else:
        reads: dict = {}
        shaken, left_out = _shaken(sources, cfg, reads)
        used = {name: mentioned(tree) for name, _, tree in shaken}
        mods = [(name, pkg, minify(ast.unparse(tree), name, {"main"}.union(*(u for m, u in used.items() if m != name))))
                for name, pkg, tree in shaken]
        keys = tuple(left_out)
        if len(_MODULES) >= 64:   # a test session's worth; the oldest goes
            del _MODULES[0]
        _MODULES.append((sources, reads, (mods, keys)))
    # the refused keys' values are this config's (a fold may have relied only on `val_every > 0`)
    return mods, {k: getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in keys}


@lru_cache(maxsize=64)  # a test session generates dozens of configs' scripts, some many times
def _generate(config_toml: str) -> Script:
    from shared.core.config import from_toml_text

    cfg = from_toml_text(config_toml)
    raw, _ = bundle(cfg, minified=False)
    small, names = bundle(cfg)
    packed, wrapper = self_extracting(small)
    plain = small.encode("utf-8")
    data, form = (packed, "self-extracting") if len(packed) < len(plain) else (plain, "plain")
    return Script(data, len(raw.encode("utf-8")), len(plain), form, names, wrapper if form != "plain" else "")


def generate(cfg: Config | None) -> Script:
    """train_gpt.py for runs of `cfg` (a pure function of the checkout and the baked config)."""
    return _generate(to_toml(baked_config(cfg)))
