"""Tree-shaking for the generated train_gpt.py: keep only the functions, classes, methods, constants and
imports the entry can reach, judged by name.

Conservative by construction: a def is kept when its name occurs anywhere in kept code (as a name, an
attribute, an imported name or a string constant), whichever module or class it sits in; every
module-level statement that could have an effect is kept, and so is every method a library calls by
name (dunders, `forward`, `backward`). Annotations are not references: the embedded modules import
`annotations` from `__future__`, so none is ever evaluated. What the shaken modules no longer import
drops out of the script (`shaken` returns the modules the entry still reaches).

Before shaking, the folds that make code unreachable: `fold_module` (names known everywhere:
`shared.SCRIPT`), `fold` (a function's known arguments), `fold_config` (the baked config),
`fold_constants` (a local bound once to a constant), then `drop_unused_inner` (nested functions
no longer called); `terse_raises` swaps messages for their line numbers.
"""

from __future__ import annotations

import ast
import operator
from collections import Counter
from collections.abc import Iterable, Iterator

# Methods a library calls by name (torch's Module.__call__, autograd.Function), never our code.
CALLED_BY_NAME = frozenset({"forward", "backward", "setup_context"})


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """`node` and every node under it, as `ast.walk` (breadth first, fields in order), about twice as fast:
    generation walks the trees a few hundred times."""
    todo = [node]
    for n in todo:   # (the list grows while it is read)
        yield n
        for field in n._fields:
            v = getattr(n, field, None)
            if isinstance(v, list):
                todo += [x for x in v if isinstance(x, ast.AST)]
            elif isinstance(v, ast.AST):
                todo.append(v)


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in _walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.body and _is_docstring(node.body[0]):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def _key(node: ast.expr) -> str | None:
    """What `known` calls a name (`x`) or an attribute of self (`self.x`)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return f"self.{node.attr}"
    return None


def _truth(test: ast.expr, known: dict[str, object]) -> bool | None:
    """The value of an `if` test over names whose values are known (`name`, `self.name`, `not name`,
    comparisons with a literal, `and`/`or` that a known operand decides), else None."""
    if _key(test) in known:
        return bool(known[_key(test)])
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = _truth(test.operand, known)
        return None if inner is None else not inner
    if isinstance(test, ast.BoolOp):
        values = [_truth(v, known) for v in test.values]
        short = isinstance(test.op, ast.Or)
        if short in values:
            return short
        return None if None in values else not short
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and _key(test.left) in known \
            and type(test.ops[0]) in _NAME_OPS:
        try:
            other = ast.literal_eval(test.comparators[0])
        except ValueError:
            return None
        return bool(_NAME_OPS[type(test.ops[0])](known[_key(test.left)], other))   # (the value read last)
    return None


# comparisons the folds evaluate: a config key's (`_ConfigFold`) and a known name's (`_truth`: no ordering)
_OPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
        ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_NAME_OPS = {**{op: _OPS[op] for op in (ast.Eq, ast.NotEq, ast.In, ast.NotIn)},
             ast.Is: operator.is_, ast.IsNot: operator.is_not}


def _simplified(test: ast.expr, known: dict[str, object]) -> ast.expr:
    """`test` less the `and`/`or` operands `known` decides without deciding the whole."""
    if isinstance(test, ast.BoolOp):
        rest = [v for v in test.values if _truth(v, known) is None]
        return rest[0] if len(rest) == 1 else ast.BoolOp(test.op, rest) if rest else test
    return test


class _Fold(ast.NodeTransformer):
    """`if` statements and `x if c else y` whose test is known become the branch taken."""

    def __init__(self, known: dict[str, object]):
        self.known = known
        self.decided = False   # an `if` statement taken: a block may be left empty (`_fill`)

    def visit_If(self, node: ast.If):
        self.generic_visit(node)
        truth = _truth(node.test, self.known)
        if truth is None:
            node.test = _simplified(node.test, self.known)
            return node
        self.decided = True
        return (node.body if truth else node.orelse) or None

    def visit_IfExp(self, node: ast.IfExp):
        self.generic_visit(node)
        truth = _truth(node.test, self.known)
        if truth is None:
            node.test = _simplified(node.test, self.known)
            return node
        return node.body if truth else node.orelse


def fold_module(tree: ast.Module, known: dict[str, object]) -> None:
    """Take the branches `known` (name -> value) decides anywhere in `tree`."""
    fold = _Fold(known)
    fold.visit(tree)
    if fold.decided:
        _fill(tree)


def _fill(tree: ast.AST) -> None:
    """A `pass` in every block a fold emptied."""
    for node in _walk(tree):
        if isinstance(getattr(node, "body", None), list) and not node.body:
            node.body = [ast.Pass()]


def fold(tree: ast.Module, function: str, known: dict[str, object]) -> None:
    """In module-level function `function` of `tree`, take the branches `known` (name -> value) decides.
    The caller vouches that the names hold these values whenever the script calls it."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function:
            _Fold(known).visit(node)
            if not node.body:
                node.body = [ast.Pass()]


def _is_text(node: ast.expr) -> bool:
    """A message: a string, an f-string, or a `+` of them."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _is_text(node.left) or _is_text(node.right)
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def terse_raises(tree: ast.Module) -> None:
    """Every `raise E("message ...")` in `tree` raises `E(<line>)` instead: the line of the module's source
    that holds the message, for a script that carries none (its entry names the module from the traceback).
    Other arguments (an exit code) stay."""
    for node in _walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args and _is_text(node.exc.args[0]):
            node.exc.args = [ast.Constant(node.lineno), *node.exc.args[1:]]


def drop_unused_inner(tree: ast.Module) -> None:
    """Functions defined inside a function and never named there again (a folded branch held their only use)."""
    changed = True
    while changed:
        changed = False
        for fn in [n for n in _walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            inner = [n for n in _walk(fn) if n is not fn and isinstance(n, ast.FunctionDef)]
            if not inner:
                continue
            used = {n.id for n in _walk(fn) if isinstance(n, ast.Name)}
            if all(f.name in used for f in inner):
                continue
            for holder in _walk(fn):
                body = getattr(holder, "body", None)
                if holder is not fn and isinstance(holder, (ast.FunctionDef, ast.ClassDef, ast.Lambda)) or not isinstance(body, list):
                    continue
                keep = [st for st in body if not (isinstance(st, ast.FunctionDef) and st.name not in used)]
                if len(keep) != len(body):
                    holder.body, changed = keep or [ast.Pass()], True


def _bindings(fn: ast.AST) -> dict[str, list[ast.expr | None]]:
    """Every name `fn` (nested scopes included) binds -> the values bound (None where not a plain `name = value`)."""
    out: dict[str, list[ast.expr | None]] = {}
    for n in _walk(fn):
        targets: list[ast.AST] = []
        if isinstance(n, ast.Assign):
            if len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
                out.setdefault(n.targets[0].id, []).append(n.value)
                continue
            targets = n.targets
        elif isinstance(n, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor, ast.comprehension, ast.NamedExpr)):
            targets = [n.target]
        elif isinstance(n, ast.Delete):
            targets = n.targets
        elif isinstance(n, (ast.With, ast.AsyncWith)):
            targets = [i.optional_vars for i in n.items if i.optional_vars is not None]
        elif isinstance(n, ast.ExceptHandler) and n.name:
            out.setdefault(n.name, []).append(None)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = n.args
            for x in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if x is not None:
                    out.setdefault(x.arg, []).append(None)
            if not isinstance(n, ast.Lambda) and n is not fn:
                out.setdefault(n.name, []).append(None)
        elif isinstance(n, (ast.Global, ast.Nonlocal, ast.Import, ast.ImportFrom)):
            for name in getattr(n, "names", []):
                out.setdefault(name if isinstance(name, str) else (name.asname or name.name.split(".")[0]), []).append(None)
        for t in targets:
            for x in _walk(t):
                if isinstance(x, ast.Name):
                    out.setdefault(x.id, []).append(None)
    return out


def fold_constants(tree: ast.Module) -> None:
    """In every function, a local bound once, to a constant (`progress = None`), decides the branches it tests."""
    decided = False
    for fn in [n for n in _walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        known = {name: v[0].value for name, v in _bindings(fn).items()
                 if len(v) == 1 and isinstance(v[0], ast.Constant)}
        if known:
            fold = _Fold(known)
            fold.visit(fn)
            decided |= fold.decided
    if decided:
        _fill(tree)


# Attributes a library sets on our objects from outside the script's code (torch's Module.train()).
LIBRARY_SET = frozenset({"training"})


def fold_attributes(trees: dict[str, ast.Module]) -> None:
    """An attribute a class sets only to one constant (`self.lm_head = None`), and nothing else ever sets
    (no other object's `.lm_head =`, no subclass, no string naming it), decides the branches its methods test."""
    stores: dict[str, list[tuple[str | None, ast.AST]]] = {}   # attribute -> (class setting self.X or None, value)
    words: set[str] = set()       # attributes named by a string (getattr, setattr, ...)
    subclassed: set[str] = set()  # classes with a subclass, or that set their own attributes by computed names
    classes = []
    for tree in trees.values():
        for top in tree.body:   # a module-level class is the scope of its `self`; anything else, the module's
            cls = top if isinstance(top, ast.ClassDef) else None
            classes += [cls] if cls else []
            for node in _walk(top):
                if isinstance(node, ast.ClassDef):
                    subclassed |= {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                f = node.func if isinstance(node, ast.Call) else None
                if ((isinstance(f, ast.Name) and f.id in ("getattr", "setattr", "hasattr", "delattr")) or (
                        isinstance(f, ast.Attribute) and f.attr in ("__setattr__", "__getattribute__", "__delattr__"))) \
                        and len(node.args) >= 2:
                    name, target = node.args[1], node.args[0]
                    if isinstance(name, ast.Constant) and isinstance(name.value, str):
                        words.add(name.value)
                    elif getattr(f, "id", getattr(f, "attr", "")) in ("getattr", "hasattr", "__getattribute__"):
                        pass   # a computed name read: changes nothing
                    elif cls is not None and isinstance(target, ast.Name) and target.id == "self":
                        subclassed.add(cls.name)
                    else:
                        return   # some object's attribute set by a computed name: anything may change
                targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                    node, (ast.AugAssign, ast.AnnAssign)) else []
                for t in targets:
                    for x in _walk(t):
                        if isinstance(x, ast.Attribute) and isinstance(x.ctx, ast.Store):
                            mine = cls is not None and isinstance(x.value, ast.Name) and x.value.id == "self"
                            value = node.value if isinstance(node, ast.Assign) and t is x else None
                            stores.setdefault(x.attr, []).append((cls.name if mine else None, value))
    for cls in classes:
        if cls.name in subclassed:
            continue
        known = {}
        for attr, where in stores.items():
            own = [v for c, v in where if c == cls.name]
            foreign = [c for c, _ in where if c != cls.name]   # None: some object's, maybe one of these
            if (own and all(isinstance(v, ast.Constant) and type(v.value) is type(own[0].value)
                            and v.value == own[0].value for v in own)   # (set once, or always to one constant)
                    and attr not in words | LIBRARY_SET and all(c is not None for c in foreign)):
                known[f"self.{attr}"] = own[0].value
        if known:
            fold = _Fold(known)
            fold.visit(cls)
            if fold.decided:
                _fill(cls)


def _code(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Every node under `nodes` outside annotations (parameters', returns', annotated assignments'):
    annotations are never evaluated in the embedded modules, so they reach nothing."""
    stack = list(nodes)
    while stack:
        n = stack.pop()
        if isinstance(n, ast.arg):
            continue
        yield n
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = n.args
            stack += [*n.decorator_list, *a.defaults, *(d for d in a.kw_defaults if d is not None), *n.body]
        elif isinstance(n, ast.AnnAssign):
            stack += [n.target] + ([n.value] if n.value is not None else [])
        else:
            stack.extend(ast.iter_child_nodes(n))


def _names(nodes: Iterable[ast.AST], modules: dict[str, str] | None = None,
           qualified: set[tuple[str, str]] | None = None) -> tuple[set[str], set[str]]:
    """What `nodes` mention outside annotations: (names: identifiers, imported names and strings;
    attributes: attribute names and strings). A method is reached only through an attribute.
    With `modules` (alias -> module, `module_aliases`), `alias.name` goes to `qualified` as (module, name)."""
    names: set[str] = set()
    attrs: set[str] = set()
    for n in _code(nodes):
        if isinstance(n, ast.Name):
            names.add(n.id)
        elif isinstance(n, ast.Attribute):
            if modules and isinstance(n.value, ast.Name) and n.value.id in modules and qualified is not None:
                qualified.add((modules[n.value.id], n.attr))
                names.add(n.value.id)
                continue
            attrs.add(n.attr)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            words = n.value.replace(":", ".").split(".")
            names.update(words)
            attrs.update(words)
        elif isinstance(n, ast.alias):
            names.add(n.asname or n.name.split(".")[0])
    return names, attrs


def module_aliases(tree: ast.Module, me: str, modules: set[str], package_of) -> dict[str, str]:
    """Names that stand for one of `modules` throughout `tree` (`from shared.data import caseops`,
    `import shared.artifact.format as artifact`), so `caseops.decode` names that module's `decode` only.
    A name bound any other way in the module, or to two modules, is left out."""
    found: dict[str, set[str]] = {}
    bound: set[str] = set()   # bound any way but by an import
    for n in _walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module != "__future__":
            base = package_of(me, n.level, n.module or "")
            for a in n.names:
                target = f"{base}.{a.name}"
                found.setdefault(a.asname or a.name, set()).add(target if target in modules else "")
        elif isinstance(n, ast.Import):
            for a in n.names:
                found.setdefault(a.asname or a.name.split(".")[0], set()).add(
                    a.name if a.asname and a.name in modules else "")
        elif isinstance(n, ast.Name) and isinstance(getattr(n, "ctx", None), (ast.Store, ast.Del)):
            bound.add(n.id)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
        elif isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            bound.add(n.name)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            bound.update(n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            bound.add(n.name)
    return {alias: next(iter(t)) for alias, t in found.items() if len(t) == 1 and "" not in t and alias not in bound}


def open_modules(trees: dict[str, ast.Module], aliases: dict[str, dict[str, str]], package_of) -> set[str]:
    """Modules whose functions an unknown object's attribute may reach: one used as a value (passed,
    stored), imported without an alias (`import a.b` then `a.b.f`), or named in a string (importlib)."""
    out: set[str] = set()
    for mod, tree in trees.items():
        alias = aliases[mod]
        nodes = list(_walk(tree))
        held = Counter(n.value.id for n in nodes if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name))
        named = Counter(n.id for n in nodes if isinstance(n, ast.Name))
        out.update(target for name, target in alias.items() if named[name] != held[name])
        for node in nodes:
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names if not a.asname)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.update(m for m in trees if m in node.value)
            elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
                base = package_of(mod, node.level, node.module or "")
                out.update(f"{base}.{a.name}" for a in node.names if (a.asname or a.name) not in alias)
    return out


def mentioned(tree: ast.AST) -> set[str]:
    """Every name, attribute and string word `tree` mentions (what another module may reach it by)."""
    names, attrs = _names([tree])
    return names | attrs


def _pure(node: ast.AST | None) -> bool:
    """No call, so dropping the statement drops no effect."""
    return node is None or not any(isinstance(n, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr))
                                   for n in _walk(node))


def _bound(stmt: ast.stmt) -> set[str] | None:
    """The names a droppable module-level statement binds (a def, a class, a pure assignment), else None."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return {stmt.name}
    if isinstance(stmt, ast.ClassDef):  # decorators (dataclass, ...) are taken to register nothing
        return {stmt.name}
    if isinstance(stmt, ast.Assign) and _pure(stmt.value) and all(isinstance(t, ast.Name) for t in stmt.targets):
        return {t.id for t in stmt.targets}
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and _pure(stmt.value):
        return {stmt.target.id}
    return None


def _kept_method(stmt: ast.stmt, live: set[str]) -> bool:
    """Class-body statements that are not methods, and the methods a library calls, always stay."""
    if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return True
    n = stmt.name
    return n in live or n in CALLED_BY_NAME or (n.startswith("__") and n.endswith("__"))


def _used_ids(tree: ast.AST) -> set[str]:
    """The identifiers `tree` reads outside annotations."""
    return {n.id for n in _code([tree]) if isinstance(n, ast.Name)}


def _imports_dropped(tree: ast.Module, used: set[str]) -> bool:
    """Drop the aliases no kept code of this module uses (nor another module imports from it)."""
    changed = False
    for node in _walk(tree):
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if not isinstance(body, list):
                continue
            out = []
            for stmt in body:
                if isinstance(stmt, (ast.Import, ast.ImportFrom)) and not (
                        isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__"):
                    keep = [a for a in stmt.names if (a.asname or a.name.split(".")[0]) in used or a.name == "*"]
                    if len(keep) != len(stmt.names):
                        changed = True
                        if not keep:
                            continue
                        stmt.names = keep
                out.append(stmt)
            if len(out) != len(body):
                setattr(node, field, out or ([] if field == "orelse" else [ast.Pass()]))
    return changed


def shake(trees: dict[str, ast.Module], roots: set[str], package_of) -> None:
    """Shake `trees` (module name -> AST, edited in place) down to what `roots` (names) reach.

    `package_of(module, level, name)` resolves an ImportFrom to the module it names."""
    # once: an import the shaking drops was unused, and with more code the modules are more open
    aliases = {mod: module_aliases(tree, mod, set(trees), package_of) for mod, tree in trees.items()}
    reachable = open_modules(trees, aliases, package_of)
    while True:
        names, attrs, qualified = set(roots), set(), set()
        todo: list[ast.AST] = []
        droppable: dict[str, list[ast.stmt]] = {}
        methods: dict[str, list[ast.stmt]] = {}
        home: dict[int, str] = {}   # id(statement or method) -> its module
        for mod, tree in trees.items():
            for stmt in tree.body:
                home[id(stmt)] = mod
                for s in stmt.body if isinstance(stmt, ast.ClassDef) else ():
                    home[id(s)] = mod
                bound = _bound(stmt)
                if bound is None:
                    if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        todo.append(stmt)
                else:
                    for b in bound:
                        droppable.setdefault(b, []).append(stmt)
        for n in roots:
            todo.extend(droppable.get(n, ()))
        seen: set[int] = set()
        while todo:
            stmt = todo.pop()
            if id(stmt) in seen:
                continue
            seen.add(id(stmt))
            parts = [stmt]
            if isinstance(stmt, ast.ClassDef):  # the class itself; its methods count once their name lives
                parts = [*stmt.decorator_list, *stmt.bases, *stmt.keywords]
                for s in stmt.body:
                    if _kept_method(s, set()):
                        parts.append(s)
                    else:
                        methods.setdefault(s.name, []).append(s)
                        if s.name in attrs:
                            todo.append(s)
            found: set[tuple[str, str]] = set()
            new_names, new_attrs = _names(parts, aliases.get(home.get(id(stmt), "")), found)
            new_names -= names
            new_attrs -= attrs
            found -= qualified
            names |= new_names
            attrs |= new_attrs
            qualified |= found
            for n in new_names:  # a module-level def: by name, or as `object.name` of a module held as a value
                todo.extend(droppable.get(n, ()))
            for n in new_attrs:
                todo.extend(s for s in droppable.get(n, ()) if home[id(s)] in reachable)
            for mod, n in found:  # `module.name` where the module is known: that module's def only
                todo.extend(s for s in droppable.get(n, ()) if home[id(s)] == mod)
            for n in new_attrs:
                todo.extend(methods.get(n, ()))
        changed = False
        for tree in trees.values():
            body = [s for s in tree.body if _bound(s) is None or id(s) in seen]
            for s in body:
                if isinstance(s, ast.ClassDef):
                    kept = [m for m in s.body if _kept_method(m, set()) or id(m) in seen]
                    if len(kept) != len(s.body):
                        s.body, changed = kept or [ast.Pass()], True
            if len(body) != len(tree.body):
                tree.body, changed = body or [ast.Pass()], True
        # an import stays while its module uses the name or another module imports it from there
        imported: dict[str, set[str]] = {}
        for mod, tree in trees.items():
            for node in _walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                    src = package_of(mod, node.level, node.module or "")
                    imported.setdefault(src, set()).update(a.name for a in node.names)
        for mod, tree in trees.items():
            changed |= _imports_dropped(tree, _used_ids(tree) | imported.get(mod, set()))
        if not changed:
            return


# ----------------------------------------------------------------------------- the baked config's branches

_SECTION_TYPES = {"ModelConfig": "model", "TrainConfig": "train", "OptimConfig": "optim", "DataConfig": "data",
                  "QuantConfig": "quant", "EvalConfig": "eval"}
_UNKNOWN = object()


def agrees(cfg, reads: dict) -> bool:
    """Whether `cfg` gives every fact in `reads` (what a fold relied on, `fold_config`) the same answer."""
    for (section, key), facts in reads.items():
        value = getattr(getattr(cfg, section), key, _UNKNOWN)
        for fact in facts:
            if fact[0] == "value":
                if repr(value) != fact[1]:
                    return False
            else:
                op, left, other, outcome = fact
                if value is _UNKNOWN or _OPS[op](*((value, other) if left else (other, value))) != outcome:
                    return False
    return True


def _annotation_section(ann) -> str | None:
    """"" for an annotation `Config`, the section for `ModelConfig`, ..., else None."""
    name = ann.id if isinstance(ann, ast.Name) else ann.value if isinstance(ann, ast.Constant) else None
    return "" if name == "Config" else _SECTION_TYPES.get(name)


class _ConfigFold(ast.NodeTransformer):
    """Branches decided by the baked config: `if` tests and `x if c else y` over config values (`cfg.quant.gptq`,
    `self.cfg.eval.mode == "ttt"`, `e.lora_phases` where `e = cfg.eval` or `e: EvalConfig`), constants,
    comparisons, `not`, `and`/`or`. `foldable(section, key)` says which keys may be decided; `used` collects
    those that decided a branch."""

    def __init__(self, cfg, foldable, reads: dict | None = None):
        self.cfg, self.foldable, self.used = cfg, foldable, set()
        # (section, key) -> what the folds relied on: ("value", repr) or (op, key on the left, constant, outcome)
        self.reads = reads
        self.scopes: list[dict] = []   # name -> "" (the whole config), a section, or (section, key)
        self.self_cfg: list[str] = []  # per class: what `self.cfg` holds ("" the config, or a section)

    def visit_FunctionDef(self, node):
        scope = dict(self.scopes[-1]) if self.scopes else {}
        a = node.args
        params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
        for p in params:
            typed = _annotation_section(p.annotation)
            if typed is None:
                scope.pop(p.arg, None)
            else:
                scope[p.arg] = typed
        assigned: dict[str, list[ast.expr | None]] = {}
        for n in _walk(node):
            if isinstance(n, ast.Assign):
                for t in n.targets:
                    for x in _walk(t):
                        if isinstance(x, ast.Name):
                            assigned.setdefault(x.id, []).append(n.value if t is x else None)
            elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.value is not None:
                typed = _annotation_section(n.annotation)   # `cfg: Config = resolve_config(...)`
                assigned.setdefault(n.target.id, []).append(ast.Constant(typed) if typed is not None else None)
            elif isinstance(n, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor, ast.comprehension, ast.NamedExpr)):
                for x in _walk(n.target):
                    if isinstance(x, ast.Name):
                        assigned.setdefault(x.id, []).append(None)
            elif isinstance(n, ast.Lambda):
                for x in [*n.args.posonlyargs, *n.args.args, *n.args.kwonlyargs]:
                    assigned.setdefault(x.arg, []).append(None)
            elif isinstance(n, (ast.With, ast.AsyncWith)):
                for item in n.items:
                    for x in _walk(item.optional_vars) if item.optional_vars is not None else ():
                        if isinstance(x, ast.Name):
                            assigned.setdefault(x.id, []).append(None)
            elif isinstance(n, ast.ExceptHandler) and n.name:
                assigned.setdefault(n.name, []).append(None)
        self.scopes.append(scope)
        for name, values in assigned.items():
            # `e = replace(e, key=...)` keeps e's section: a key some `replace` sets is never decided
            values = [v for v in values if not (isinstance(v, ast.Call) and isinstance(v.func, ast.Name)
                                                and v.func.id == "replace" and v.args
                                                and isinstance(v.args[0], ast.Name) and v.args[0].id == name)]
            if not values:
                continue
            scope.pop(name, None)
            if len(values) == 1 and values[0] is not None and not any(p.arg == name for p in params):
                if isinstance(values[0], ast.Constant) and values[0].value in ("", *_SECTION_TYPES.values()):
                    scope[name] = values[0].value   # typed by its annotation
                    continue
                where = self._where(values[0])
                if where is not None:  # a section (`q = cfg.quant`) or a key (`name = q.compressor`)
                    scope[name] = where[0] if where[1] is None else where
        self.generic_visit(node)
        self.scopes.pop()
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        """`self.cfg` is the config, or the section `__init__` stores there (`self.cfg = m` for `m: ModelConfig`)."""
        section = ""
        for fn in node.body:
            if isinstance(fn, ast.FunctionDef) and fn.name == "__init__":
                types = {a.arg: _annotation_section(a.annotation) for a in [*fn.args.args, *fn.args.kwonlyargs]}
                for st in _walk(fn):
                    if (isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.value, ast.Name)
                            and ast.unparse(st.targets[0]) == "self.cfg" and types.get(st.value.id) is not None):
                        section = types[st.value.id]
        self.self_cfg.append(section)
        try:
            return self.generic_visit(node)
        finally:
            self.self_cfg.pop()

    def _where(self, node) -> tuple[str, str | None] | None:
        """(section, key) a config expression names: ("", None) the config, (section, None) a section."""
        scope = self.scopes[-1] if self.scopes else {}
        if isinstance(node, ast.Name):
            if node.id not in scope:
                return None
            return (scope[node.id], None) if isinstance(scope[node.id], str) else scope[node.id]
        if isinstance(node, ast.Attribute):
            if node.attr == "cfg" and isinstance(node.value, ast.Name) and node.value.id == "self":
                return (self.self_cfg[-1] if self.self_cfg else "", None)
            base = self._where(node.value)
            if base is None or base[1] is not None:
                return None
            if base[0] == "":
                return (node.attr, None) if node.attr in _SECTION_TYPES.values() else None
            return (base[0], node.attr)
        return None

    def _note(self, where, fact) -> None:
        if self.reads is not None:
            self.reads.setdefault(where, set()).add(fact)

    def _lookup(self, where):
        """The baked value of the key `where` names, or _UNKNOWN (a method, or a key not decided)."""
        value = getattr(getattr(self.cfg, where[0]), where[1], _UNKNOWN)
        if value is _UNKNOWN or callable(value):
            return _UNKNOWN
        self.used.add(f"{where[0]}.{where[1]}")
        return value

    def _config_key(self, node):
        where = self._where(node)
        return where if where is not None and where[1] is not None and self.foldable(*where) else None

    def _value(self, node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = [self._value(x) for x in node.elts]
            return _UNKNOWN if any(x is _UNKNOWN for x in items) else tuple(items)
        where = self._config_key(node)
        if where is not None:
            value = self._lookup(where)
            if value is not _UNKNOWN:
                self._note(where, ("value", repr(value)))
            return value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            v = self._value(node.operand)
            return _UNKNOWN if v is _UNKNOWN else not v
        if isinstance(node, ast.BoolOp):
            for x in node.values:   # decided by a known operand that short-circuits, or by all of them
                v = self._value(x)
                if v is _UNKNOWN:
                    return _UNKNOWN
                if bool(v) == isinstance(node.op, ast.Or):
                    return v
            return v
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _OPS:
            # a key compared with a constant: the fold relies on the outcome only (`q.prune_values > 0`), so
            # another value with the same outcome folds the same
            keys = [self._config_key(x) for x in (node.left, node.comparators[0])]
            if self.reads is not None and sum(k is not None for k in keys) == 1:
                left = keys[0] is not None
                where = keys[0] or keys[1]
                reads, self.reads = self.reads, None   # the other side's own reads: none, or it is not a constant
                other = self._value(node.comparators[0] if left else node.left)
                self.reads = reads
                if other is not _UNKNOWN and _is_constant(node.comparators[0] if left else node.left):
                    value = self._lookup(where)
                    if value is _UNKNOWN:
                        return _UNKNOWN
                    outcome = _OPS[type(node.ops[0])](*((value, other) if left else (other, value)))
                    self._note(where, (type(node.ops[0]), left, other, outcome))
                    return outcome
            a, b = self._value(node.left), self._value(node.comparators[0])
            if a is _UNKNOWN or b is _UNKNOWN:
                return _UNKNOWN
            return _OPS[type(node.ops[0])](a, b)
        return _UNKNOWN

    def _truth(self, test):
        used = set(self.used)
        if isinstance(test, ast.BoolOp):  # as a test, any operand known to short-circuit decides it
            short = isinstance(test.op, ast.Or)
            values = [self._truth(v) for v in test.values]
            if short in values:
                return short
            if None not in values:
                return not short
            self.used = used
            return None
        v = self._value(test)
        if v is _UNKNOWN:
            self.used = used  # a test left standing decides nothing
            return None
        return bool(v)

    def _simplified(self, test):
        """`test` less the `and`/`or` operands the config decides without deciding the whole (those that do
        not short-circuit: had one, `_truth` would have decided the test)."""
        if not isinstance(test, ast.BoolOp):
            return test
        rest = [v for v in test.values if self._truth(v) is None]
        return rest[0] if len(rest) == 1 else ast.BoolOp(test.op, rest) if rest else test

    def _decided(self, node):
        """A comparison, `not` or `and`/`or` the config decides whole becomes its value
        (`self.sharded = cfg.train.grad_sync == "sharded"` -> `self.sharded = True`)."""
        self.generic_visit(node)
        used = set(self.used)
        value = self._value(node)
        if value is _UNKNOWN or not isinstance(value, (bool, int, float, str, type(None))):
            self.used = used
            if isinstance(node, ast.BoolOp):  # `False or x` is `x`: a known operand that neither decides nor ends goes
                short = isinstance(node.op, ast.Or)
                rest = [v for v in node.values[:-1] if not self._neutral(v, short)] + [node.values[-1]]
                return rest[0] if len(rest) == 1 else ast.BoolOp(node.op, rest)
            return node
        return ast.copy_location(ast.Constant(value), node)

    visit_Compare = visit_BoolOp = _decided

    def visit_Assign(self, node):
        """`self.x = <config flag or mode>` stores its value (so an attribute fold can decide `self.x` tests)."""
        self.generic_visit(node)
        t = node.targets[0] if len(node.targets) == 1 else None
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
            used = set(self.used)
            value = self._value(node.value)
            if value is not _UNKNOWN and isinstance(value, (bool, str, type(None))):  # flags and modes, not sizes
                node.value = ast.copy_location(ast.Constant(value), node.value)
            else:
                self.used = used
        return node

    def _neutral(self, operand, short: bool) -> bool:
        used = set(self.used)
        value = self._value(operand)
        if value is _UNKNOWN or bool(value) == short:
            self.used = used
            return False
        return True

    def visit_UnaryOp(self, node):
        return self._decided(node) if isinstance(node.op, ast.Not) else self.generic_visit(node)

    def visit_If(self, node):
        self.generic_visit(node)
        truth = self._truth(node.test)
        if truth is None:
            node.test = self._simplified(node.test)
            return node
        return (node.body if truth else node.orelse) or None

    def visit_IfExp(self, node):
        self.generic_visit(node)
        truth = self._truth(node.test)
        if truth is None:
            node.test = self._simplified(node.test)
            return node
        return node.body if truth else node.orelse


def _is_constant(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) or (isinstance(node, (ast.Tuple, ast.List, ast.Set))
                                              and all(_is_constant(x) for x in node.elts))


def fold_config(tree: ast.Module, cfg, foldable, reads: dict | None = None) -> set[str]:
    """Take the branches the baked config `cfg` decides, in every function of `tree`; returns the keys
    (`section.key`) that decided one. `reads` collects what the folds relied on of each key they looked at
    (its value, or the outcome of comparing it with a constant): another config that `agrees` with it on
    all of them folds the same."""
    f = _ConfigFold(cfg, foldable, reads)
    f.visit(tree)
    _cut_after_exits(tree)
    return f.used


def _cut_after_exits(tree: ast.AST) -> None:
    """What follows a return or raise never runs (left by a folded branch); an emptied body gets `pass`."""
    for node in _walk(tree):
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if field == "body" and isinstance(body, list) and not body:
                node.body = [ast.Pass()]
            elif isinstance(body, list):
                end = next((i for i, st in enumerate(body) if isinstance(st, (ast.Return, ast.Raise))), None)
                if end is not None and end + 1 < len(body):
                    setattr(node, field, body[: end + 1])


class _CallFacts(_ConfigFold):
    """Every call in a module, with what the baked config says of its arguments: (callee, values, keywords),
    where the callee is (module, name) for a module-level function the call resolves to, or (None, name) for
    `object.name(...)`; a value is `_UNKNOWN` where the config does not decide it. `params` (function node id
    -> parameter -> value) holds what earlier passes decided of the callers' own parameters."""

    def __init__(self, cfg, foldable, resolve, params, reads=None):
        super().__init__(cfg, foldable, reads)
        self.resolve, self.params, self.calls, self.called = resolve, params, [], set()
        self.frames: list[dict] = []

    def visit_FunctionDef(self, node):
        frame = dict(self.params.get(id(node), {}))
        self.frames.append(frame)
        if frame:   # a local bound once to what the known parameters decide (`name = pipeline or ...`) is known too
            for name, values in _bindings(node).items():
                if name not in frame and len(values) == 1 and values[0] is not None:
                    value, keys, notes = self._arg(values[0])
                    if value is not _UNKNOWN:
                        frame[name] = value, keys, notes
        try:
            return super().visit_FunctionDef(node)
        finally:
            self.frames.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def _value(self, node):
        if isinstance(node, ast.Name) and self.frames and node.id in self.frames[-1]:
            value, keys, notes = self.frames[-1][node.id]
            self.used |= keys
            _merge(self.reads, notes)   # what the value rests on counts once it is used
            return value
        return super()._value(node)

    def visit_Call(self, node):
        self.generic_visit(node)
        callee = self.resolve(node.func)
        if callee is None:
            return node
        self.called.add(id(node.func))
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            self.calls.append((callee, None, None))
            return node
        before = set(self.used)
        args = [self._arg(a) for a in node.args]
        kws = {k.arg: self._arg(k.value) for k in node.keywords}
        self.used = before
        self.calls.append((callee, args, kws))
        return node

    def _arg(self, node):
        """(value, the keys that decided it, what it rests on of the config): the last is noted only where
        the value ends up deciding something (`fold_arguments`), so a count passed along but never tested
        does not tie the result to its value."""
        used, reads = set(self.used), self.reads
        self.reads = {}
        value = self._value(node)
        keys, self.used = self.used - used, used
        notes, self.reads = self.reads, reads
        return value, keys, notes

    def visit_If(self, node):   # a reader: it rewrites nothing
        self.generic_visit(node)
        return node

    visit_IfExp = visit_Compare = visit_BoolOp = visit_UnaryOp = visit_Assign = visit_If


def _resolvers(trees, package_of, aliases, defs) -> dict:
    """module -> resolve(call's func): the callee (module, name) of a module-level function, (None, name) for
    `object.name(...)`, None for anything else."""
    out = {}
    for mod, tree in trees.items():
        imported = {}
        for node in _walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                base = package_of(mod, node.level, node.module or "")
                imported.update({a.asname or a.name: (base, a.name) for a in node.names})

        def resolve(func, mod=mod, imported=imported):
            if isinstance(func, ast.Name):
                return (mod, func.id) if (mod, func.id) in defs else imported.get(func.id)
            if isinstance(func, ast.Attribute):
                if isinstance(func.value, ast.Name) and func.value.id in aliases[mod]:
                    return aliases[mod][func.value.id], func.attr
                return None, func.attr
            return None
        out[mod] = resolve
    return out


def _calls(trees, cfg, foldable, resolvers, params, referenced: set[str] | None = None, reads=None) -> dict:
    """module -> its calls [(callee, args, keywords)]; with `referenced`, adds the names used other than as a
    call's callee."""
    calls: dict[str, list] = {}
    for mod, tree in trees.items():
        facts = _CallFacts(cfg, foldable, resolvers[mod], params, reads)
        facts.visit(tree)
        calls[mod] = facts.calls
        if referenced is not None:
            referenced |= _referenced(tree, facts.called)
    return calls


def _referenced(tree: ast.AST, called: set[int]) -> set[str]:
    """The names `tree` uses other than as the callee of a call (`called`: those callee nodes' ids), with every
    word of its strings: a function so named may be called with anything (a callback, getattr)."""
    out: set[str] = set()
    for n in _walk(tree):
        if isinstance(n, (ast.Name, ast.Attribute)) and id(n) not in called:
            out.add(n.id if isinstance(n, ast.Name) else n.attr)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            out.update(n.value.replace(":", ".").split("."))
    return out


def _merge(reads: dict | None, notes: dict) -> None:
    if reads is not None:
        for where, facts in notes.items():
            reads.setdefault(where, set()).update(facts)


class _Consulted(dict):
    """Known values that remember which of them a fold read (`_truth` reads one only to decide a test)."""

    def __init__(self, values: dict):
        super().__init__(values)
        self.seen: set[str] = set()

    def __getitem__(self, name):
        self.seen.add(name)
        return super().__getitem__(name)


def _agreed(fn: ast.FunctionDef, sites: list, bound: dict | None = None, reads: dict | None = None) -> dict:
    """The parameters of `fn` every call site passes one known value for (or leaves a constant default):
    parameter -> (value, the config keys that decided it, what it rests on of the config). Where the sites
    do not agree, what their values rest on goes to `reads` (another config might make them agree)."""
    a = fn.args
    params = [*a.posonlyargs, *a.args]
    defaults = [None] * (len(params) - len(a.defaults)) + list(a.defaults)
    slots = [(x.arg, i, d) for i, (x, d) in enumerate(zip(params, defaults, strict=True))]
    slots += [(x.arg, None, d) for x, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)]
    bound = _bindings(fn) if bound is None else bound
    known = {}
    for arg, i, default in slots:
        if len(bound.get(arg, [])) != 1:
            continue
        values = []
        for args, kws in sites:
            if arg in kws:
                values.append(kws[arg])
            elif i is not None and i < len(args):
                values.append(args[i])
            elif isinstance(default, ast.Constant):
                values.append((default.value, set(), {}))
            else:
                values.append((_UNKNOWN, set(), {}))
        first, notes = values[0][0], {}
        for _, _, n in values:
            _merge(notes, n)
        if first is not _UNKNOWN and not callable(first) and all(
                v is not _UNKNOWN and type(v) is type(first) and v == first for v, _, _ in values):
            known[arg] = first, set().union(*(k for _, k, _ in values)), notes
        else:
            _merge(reads, notes)
    return known


def _decided_by(known: dict) -> dict:
    return {arg: (value, keys) for arg, (value, keys, _) in known.items()}


def fold_arguments(trees: dict[str, ast.Module], cfg, foldable, package_of, roots: set[str],
                   reads: dict | None = None) -> set[str]:
    """A module-level function whose every call passes one value the baked config or a constant decides for a
    parameter (or leaves its constant default) takes the branches that value decides; what one function
    learns of its parameters decides its own calls' arguments in the next pass. Calls are found by name
    through each module's imports and `module.name`; a function also named anywhere other than as the
    callee of a call (a callback, a string), or reached through a module held as a value, is left alone.
    Shakes (from `roots`) first and between rounds: calls from dead code would hide what the live ones agree
    on. Returns the config keys that decided a branch; `reads` as `fold_config`'s."""
    params: dict[int, dict] = {}
    used: set[str] = set()
    for rnd in range(3):   # two rounds at most: a round's folds leave callers dead whose calls hid what the rest agree on
        shake(trees, roots, package_of)
        if rnd == 2:
            break
        aliases = {mod: module_aliases(tree, mod, set(trees), package_of) for mod, tree in trees.items()}
        reachable = open_modules(trees, aliases, package_of)
        defs = {(mod, st.name): st for mod, tree in trees.items() for st in tree.body if isinstance(st, ast.FunctionDef)}
        resolvers, referenced = _resolvers(trees, package_of, aliases, defs), set()
        folded, dirty, by_module, bindings = False, set(trees), {}, {}
        for i in range(6):  # a chain of calls settles in a pass per link; the script's are short
            # folding only takes code away: the names referenced before the first pass cover every later one;
            # only a module where a function learnt something makes other calls than in the last pass
            by_module.update(_calls({m: trees[m] for m in dirty}, cfg, foldable, resolvers, params,
                                    referenced if i == 0 else None, reads))
            calls: dict[tuple, list] = {}
            for mod_calls in by_module.values():
                for callee, args, kws in mod_calls:
                    calls.setdefault(callee, []).append((args, kws))
            grew, dirty = False, set()
            for (mod, name), fn in defs.items():
                sites = calls.get((mod, name), []) + (calls.get((None, name), []) if mod in reachable else [])
                if not sites or name in referenced or any(args is None for args, _ in sites):
                    continue
                if id(fn) not in bindings:
                    bindings[id(fn)] = _bindings(fn)
                known = _agreed(fn, sites, bindings[id(fn)], reads)
                if known and _decided_by(known) != _decided_by(params.get(id(fn), {})):
                    params[id(fn)], grew = known, True
                    dirty.add(mod)
                    bindings.pop(id(fn))   # the fold may take some away
                    before = ast.dump(fn)
                    consulted = _Consulted({arg: value for arg, (value, _, _) in known.items()})
                    _Fold(consulted).visit(fn)
                    for arg in consulted.seen:
                        _merge(reads, known[arg][2])
                    if ast.dump(fn) != before:
                        used |= set().union(*(known[arg][1] for arg in consulted.seen))
                        folded = True
            if not grew:
                break
        if not folded:   # nothing changed since the shake
            break
        for tree in trees.values():
            _cut_after_exits(tree)   # (which fills the blocks a fold emptied)
    return used


def _is_nullcontext(node: ast.AST | None) -> bool:
    f = node.func if isinstance(node, ast.Call) and not node.args and not node.keywords else None
    return (isinstance(f, ast.Name) and f.id == "nullcontext") or (
        isinstance(f, ast.Attribute) and f.attr == "nullcontext" and isinstance(f.value, ast.Name)
        and f.value.id == "contextlib")


def _empty(body: list[ast.stmt]) -> bool:
    return all(isinstance(st, ast.Pass) or (isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant))
               for st in body)


def _tidy_function(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """One round of `tidy` on one function; whether it changed anything."""
    bound = _bindings(fn)
    declared, loaded, stubs = set(), set(), set()
    for n in _walk(fn):
        if isinstance(n, ast.Name):
            if not isinstance(n.ctx, ast.Store):
                loaded.add(n.id)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            declared.update(n.names)
        elif n is not fn and isinstance(n, ast.FunctionDef) and not n.decorator_list and _empty(n.body):
            stubs.add(n.name)
    stubs = {name for name in stubs if len(bound.get(name, [])) == 1}
    null = {name for name, v in bound.items() if len(v) == 1 and _is_nullcontext(v[0])}
    changed = False
    for holder in _walk(fn):
        if holder is not fn and isinstance(holder, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        for field in ("body", "orelse", "finalbody"):
            body = getattr(holder, field, None)
            if not isinstance(body, list):
                continue
            out: list[ast.stmt] = []
            for st in body:
                if (isinstance(st, ast.With) and len(st.items) == 1 and st.items[0].optional_vars is None
                        and (_is_nullcontext(st.items[0].context_expr) or (
                            isinstance(st.items[0].context_expr, ast.Name) and st.items[0].context_expr.id in null))):
                    out += st.body      # `with nullcontext():` is its body
                elif (isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name)
                      and st.targets[0].id not in loaded and st.targets[0].id not in declared
                      and (_is_nullcontext(st.value) or (_pure(st.value) and not any(
                          isinstance(n, ast.Subscript) for n in _walk(st.value))))):   # d[k]: a check
                    pass                # a local nothing reads, bound without effect
                elif (isinstance(st, ast.Expr) and isinstance(st.value, ast.Call) and isinstance(st.value.func, ast.Name)
                      and st.value.func.id in stubs and all(_pure(a) for a in st.value.args)
                      and all(_pure(k.value) for k in st.value.keywords)):
                    pass                # a call of an inner function a fold emptied
                else:
                    out.append(st)
            if out != body:   # (nodes compare by identity)
                setattr(holder, field, out or ([] if field != "body" else [ast.Pass()]))
                changed = True
    return changed


def tidy(tree: ast.Module) -> None:
    """What the folds leave behind, in every function: `with nullcontext():` blocks become their body; a local
    nothing reads, bound to an expression without calls, goes; so do calls of an inner function whose body a fold
    emptied (then the function, by `drop_unused_inner`); and, at module level, an `if` left with nothing to do
    (`if TYPE_CHECKING: pass`)."""
    changed = True
    while changed:
        changed = any([_tidy_function(fn) for fn in _walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))])
        if changed:
            drop_unused_inner(tree)
    tree.body = [st for st in tree.body if not (isinstance(st, ast.If) and _pure(st.test) and _empty(st.body)
                                                 and _empty(st.orelse))] or [ast.Pass()]


_PURE_CALLS = frozenset({"str", "repr", "len", "int", "float", "bool", "tuple", "list", "dict", "set", "sorted",
                         "min", "max", "abs", "round"})


def _droppable(node: ast.expr) -> bool:
    """An argument whose evaluation has no effect: no call but of a pure builtin (`str(path)`)."""
    return all(not isinstance(n, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)) or (
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in _PURE_CALLS)
        for n in _walk(node))


def drop_unused_params(trees: dict[str, ast.Module], package_of) -> bool:
    """A module-level function's parameters its body never reads (a message only an error used, a switch a
    fold decided) leave the def and every call, where every call is known (by name or `module.name`, the
    function named nowhere else, its name defined once) and passes them without effect. Whether any did."""
    aliases = {mod: module_aliases(tree, mod, set(trees), package_of) for mod, tree in trees.items()}
    reachable = open_modules(trees, aliases, package_of)
    defs = {(mod, st.name): st for mod, tree in trees.items() for st in tree.body if isinstance(st, ast.FunctionDef)}
    resolvers = _resolvers(trees, package_of, aliases, defs)
    defined: dict[str, int] = {}
    sites: dict[tuple, list[ast.Call]] = {}
    referenced: set[str] = set()
    for mod, tree in trees.items():
        called = set()
        for n in _walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined[n.name] = defined.get(n.name, 0) + 1
            elif isinstance(n, ast.Call) and (callee := resolvers[mod](n.func)) is not None:
                called.add(id(n.func))
                sites.setdefault(callee, []).append(n)
        referenced |= _referenced(tree, called)
    dropped = False
    for (mod, name), fn in defs.items():
        # `obj.name(...)` may be a library object's method of the same name: a function such a call may reach
        # (its module held as a value) keeps its parameters
        calls = sites.get((mod, name), [])
        a = fn.args
        if (not calls or (mod in reachable and (None, name) in sites) or name in referenced or defined.get(name) != 1
                or fn.decorator_list or a.vararg
                or a.kwarg or a.posonlyargs or any(isinstance(x, ast.Starred) for c in calls for x in c.args)
                or any(k.arg is None for c in calls for k in c.keywords)):
            continue
        read = {n.id for n in _walk(fn) if isinstance(n, ast.Name)}
        first_default = len(a.args) - len(a.defaults)
        for i in reversed(range(len(a.args))):
            arg = a.args[i].arg
            if arg in read or not all(_droppable(c.args[i]) for c in calls if i < len(c.args)) or not all(
                    _droppable(k.value) for c in calls for k in c.keywords if k.arg == arg):
                continue
            del a.args[i]
            dropped = True
            if i >= first_default:
                del a.defaults[i - first_default]
            else:
                first_default -= 1
            for c in calls:
                if i < len(c.args):
                    del c.args[i]
                c.keywords = [k for k in c.keywords if k.arg != arg]
        for i in reversed(range(len(a.kwonlyargs))):
            arg = a.kwonlyargs[i].arg
            if arg in read or not all(_droppable(k.value) for c in calls for k in c.keywords if k.arg == arg):
                continue
            del a.kwonlyargs[i], a.kw_defaults[i]
            dropped = True
            for c in calls:
                c.keywords = [k for k in c.keywords if k.arg != arg]
    return dropped
