"""The TensorRT Python API the project's code uses, found in its source, and checked against a real tensorrt module.

Standard library only: tests/test_tensorrt_api.py runs ``check(trt, paths)`` in a subprocess where one real
``tensorrt_bindings`` (10.x or 11.x, its libraries stood in for by stubs) is importable.

What counts as a use, from the AST of each file:

* a chain from the module (``trt.BuilderFlag.TF32``, ``trt.ILogger.Severity.ERROR``, ``trt.__version__``):
  every link must exist; a call of it (``trt.Runtime(logger)``, ``trt.ILogger.__init__(self)``) must fit
  the constructor's (or the unbound method's) signature;
* a method call, attribute read or attribute assignment on a TensorRT object: the member must exist on its
  class, a call must fit one of its overloads (positional count and keyword names), an assignment needs a
  property with a setter, and a property is never called;
* a method of a subclass of a TensorRT class (the ILogger): the base has it, with the same parameters.

An object's class comes from where the value comes from: a constructor, a method's return type as the
bindings annotate it, an element of a list or dict built from those, a tuple unpacked element-wise, an
attribute assigned in a class's methods.  Parameters and values returned by the project's own functions
have no such source: RECEIVERS names their classes by the variable names the code uses (each entry must be
used, and must agree with the inferred class wherever both exist).  A member of some TensorRT class read
on an object of unknown class is reported too (``untyped``), so new code cannot slip past unchecked.

Uses guarded by ``hasattr(obj, "name")`` (inside that if/else branch or conditional expression) or made
with ``getattr(obj, "name", default)`` are optional: the code runs without them, so a missing one is
reported in ``optional_missing``, not as a problem.
"""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

MODULE = "<tensorrt>"  # the type of a name bound to the tensorrt module
MODULE_NAMES = {"trt", "tensorrt"}  # how the code names the module (and self.trt)

# Parameters and results of the project's own functions, by the names the code gives them.
RECEIVERS = {
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
    "builder": "Builder",
    "config": "IBuilderConfig",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "runtime": "Runtime",
}
# Receivers that read TensorRT member names but are not TensorRT objects (each entry must be seen).
NOT_TENSORRT = {
    "prop": "cuda-python's cudaDeviceProp (major, minor, name)",
    "plan": "the project's TensorRTBuildPlan (precision: a TensorRT 10 ILayer property name)",
}


# ---- signatures as pybind11 writes them in docstrings ---------------------------------------------------------

def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets and quotes."""
    out, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def signatures(fn, name: str) -> list[dict]:
    """Overloads of a pybind11 function: [{"params": [(name, has_default, kind)], "returns": str}]."""
    doc = getattr(fn, "__doc__", None) or ""
    found = []
    for line in doc.splitlines():
        m = re.match(rf"^\s*(?:\d+\.\s+)?{re.escape(name)}\((.*)\)\s*->\s*(.+?)\s*$", line)
        if not m or m.group(1) == "*args, **kwargs":
            continue
        params = []
        for p in _split_top(m.group(1)):
            if p in ("/", "*"):
                continue
            kind = "var" if p.startswith("**") else "star" if p.startswith("*") else "plain"
            pname = p.lstrip("*").split(":")[0].split("=")[0].strip()
            params.append((pname, "=" in p, kind))
        found.append({"params": params, "returns": m.group(2)})
    return found


def accepts(sig: dict, nargs: int, kwargs: list[str], starred: bool) -> bool:
    params = sig["params"]
    if any(k == "star" for _, _, k in params) or any(k == "var" for _, _, k in params):
        return True
    names = [p for p, _, _ in params]
    if nargs > len(params) or any(k not in names[nargs:] for k in kwargs):
        return False
    if starred:
        return True
    return all(i < nargs or p in kwargs or default for i, (p, default, _) in enumerate(params))


# ---- the checker -----------------------------------------------------------------------------------------------

class Checker:
    def __init__(self, trt):
        self.trt = trt
        self.classes = {n: c for n, c in vars(trt).items() if inspect.isclass(c) and not n.startswith("_")}
        self.checked: set[str] = set()
        self.problems: list[str] = []
        self.optional_missing: set[str] = set()
        self.untyped: list[str] = []
        self.receivers_used: set[str] = set()
        self.not_tensorrt_used: set[str] = set()
        self.trt_members = self._trt_only_members()
        self.where = ""

    def _trt_only_members(self) -> set[str]:
        names = {a for c in self.classes.values() for a in dir(c) if not a.startswith("_")}
        common = [str, bytes, dict, list, tuple, set, int, float, object, Path, memoryview, type]
        try:
            import numpy

            common += [numpy.ndarray, numpy.dtype]
        except ImportError:
            pass
        for t in common:
            names -= set(dir(t))
        return names

    # -- types -------------------------------------------------------------------------------------------------
    def _class_of_annotation(self, text: str):
        text = text.strip()
        m = re.match(r"^(?:typing\.)?(?:list|List)\[(.*)\]$", text)
        if m:
            inner = self._class_of_annotation(m.group(1))
            return ("list", inner) if inner else None
        last = re.split(r"[.:]+", text)[-1]
        for cand in (last, last[1:] if last.startswith("I") else None):  # C++ names: nvonnxparser::IParserError
            if cand and cand in self.classes:
                return cand
        return None

    def returns(self, cls: str, method: str):
        fn = getattr(self.classes.get(cls), method, None)
        if fn is None:
            return None
        if isinstance(inspect.getattr_static(self.classes[cls], method, None), property):
            sigs = signatures(inspect.getattr_static(self.classes[cls], method).fget, "")
            return self._class_of_annotation(sigs[0]["returns"]) if sigs else None
        sigs = signatures(fn, method)
        return self._class_of_annotation(sigs[0]["returns"]) if sigs else None

    # -- uses --------------------------------------------------------------------------------------------------
    def problem(self, text: str) -> None:
        self.problems.append(f"{self.where}: {text}")

    def use_chain(self, chain: list[str], *, call=None, optional=False) -> None:
        """trt.A.B...: every link exists; a call fits its constructor or unbound method."""
        obj, path = self.trt, []
        for link in chain:
            path.append(link)
            dotted = ".".join(path)
            if not hasattr(obj, link):
                if optional:
                    self.optional_missing.add(f"tensorrt.{dotted}")
                else:
                    self.problem(f"tensorrt.{dotted} does not exist")
                return
            obj = getattr(obj, link)
        self.checked.add(f"tensorrt.{'.'.join(chain)}" + ("()" if call else ""))
        if call is not None:
            nargs, kwargs, starred = call
            name = f"tensorrt.{'.'.join(chain)}"
            if inspect.isclass(obj):  # a constructor: checked as its __init__ bound to the new object
                self._fits(name, signatures(obj.__init__, "__init__"), (nargs, kwargs, starred, True))
            else:  # a function or an unbound method called with self explicitly
                self._fits(name, signatures(obj, chain[-1]), (nargs, kwargs, starred, False))

    def use_member(self, cls: str, attr: str, *, kind: str, call=None, optional=False) -> None:
        klass = self.classes[cls]
        static = inspect.getattr_static(klass, attr, None)
        if static is None:
            if optional:
                self.optional_missing.add(f"{cls}.{attr}")
            else:
                self.problem(f"{cls}.{attr} does not exist")
            return
        is_prop = isinstance(static, property)
        self.checked.add(f"{cls}.{attr}" + ("()" if kind == "call" else " =" if kind == "set" else ""))
        if kind == "set" and not (is_prop and static.fset is not None):
            self.problem(f"{cls}.{attr} is assigned but is not a settable property")
        elif kind == "call":
            if is_prop:
                self.problem(f"{cls}.{attr} is a property, and the code calls it")
            else:
                self._fits(f"{cls}.{attr}", signatures(getattr(klass, attr), attr), call)

    def _fits(self, name: str, sigs: list[dict], call) -> None:
        nargs, kwargs, starred, bound = call
        if not sigs:
            self.problem(f"{name}: no signature in its docstring to check the call against")
            return
        drop = 1 if bound else 0
        if not any(accepts({"params": s["params"][drop:]}, nargs, kwargs, starred) for s in sigs):
            shown = " | ".join(f"({', '.join(p for p, _, _ in s['params'][drop:])})" for s in sigs)
            self.problem(f"{name} called with {nargs} positional and keywords {kwargs or '-'}; it takes {shown}")

    # -- walking -------------------------------------------------------------------------------------------------
    def check_file(self, path: Path) -> None:
        tree = ast.parse(Path(path).read_text(), filename=str(path))
        self.file = Path(path).name
        self._block(tree.body, {}, {}, frozenset())

    def _block(self, body, env, cls_env, guards) -> None:
        for stmt in body:
            self._stmt(stmt, env, cls_env, guards)

    def _stmt(self, stmt, env, cls_env, guards) -> None:
        self.where = f"{self.file}:{getattr(stmt, 'lineno', '?')}"
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local = dict(env)
            for a in [*stmt.args.posonlyargs, *stmt.args.args, *stmt.args.kwonlyargs]:
                if a.arg in MODULE_NAMES:
                    local[a.arg] = MODULE
                elif a.arg in RECEIVERS:
                    local[a.arg] = RECEIVERS[a.arg]
                    self.receivers_used.add(a.arg)
            self._block(stmt.body, local, cls_env, guards)
            return
        if isinstance(stmt, ast.ClassDef):
            self._class(stmt, env, guards)
            return
        if isinstance(stmt, ast.If):
            self._exprs(stmt.test, env, cls_env, guards)
            self._block(stmt.body, env, cls_env, guards | self._guards_in(stmt.test))
            self._block(stmt.orelse, env, cls_env, guards)
            return
        if isinstance(stmt, (ast.For, ast.While, ast.With, ast.Try)):
            for field in ("iter", "test"):
                if getattr(stmt, field, None) is not None:
                    self._exprs(getattr(stmt, field), env, cls_env, guards)
            for item in getattr(stmt, "items", []):
                self._exprs(item.context_expr, env, cls_env, guards)
            for field in ("body", "orelse", "finalbody"):
                self._block(getattr(stmt, field, []), env, cls_env, guards)
            for h in getattr(stmt, "handlers", []):
                self._block(h.body, env, cls_env, guards)
            return
        self._exprs(stmt, env, cls_env, guards)
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                self._bind(target, stmt.value, env, cls_env)

    def _class(self, node: ast.ClassDef, env, guards) -> None:
        for b in node.bases:
            self._exprs(b, env, {}, guards)
        bases = [self._chain(b, env, {}) for b in node.bases]
        cls_env: dict = {}
        for base in bases:
            if base and len(base) == 1 and base[0] in self.classes:
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name != "__init__":
                        self._override(base[0], item)
        for item in node.body:
            self._stmt(item, env, cls_env, guards)

    def _override(self, base: str, fn: ast.FunctionDef) -> None:
        self.where = f"{self.file}:{fn.lineno}"
        klass = self.classes[base]
        if not hasattr(klass, fn.name):
            return  # a method of our own
        ours = [a.arg for a in fn.args.args][1:]
        theirs = [s["params"][1:] for s in signatures(getattr(klass, fn.name), fn.name)]
        self.checked.add(f"{base}.{fn.name} (overridden)")
        if theirs and not any(len(t) == len(ours) for t in theirs):
            self.problem(f"{base}.{fn.name} is overridden with parameters {ours}; it has "
                         f"{[[p for p, _, _ in t] for t in theirs]}")

    def _guards_in(self, test) -> frozenset:
        keys = set()
        for n in ast.walk(test):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "hasattr" \
                    and len(n.args) == 2 and isinstance(n.args[1], ast.Constant):
                keys.add((ast.unparse(n.args[0]), n.args[1].value))
        return frozenset(keys)

    def _bind(self, target, value, env, cls_env) -> None:
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
            for t, v in zip(target.elts, value.elts):
                self._bind(t, v, env, cls_env)
            return
        if isinstance(target, ast.Tuple):
            for t in target.elts:  # unpacked from a call of our own: only RECEIVERS can say
                self._bind_type(t, None, env, cls_env)
            return
        self._bind_type(target, self._type(value, env, cls_env), env, cls_env)

    def _bind_type(self, target, inferred, env, cls_env) -> None:
        if isinstance(target, ast.Name):
            name, store = target.id, env
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
            name, store = target.attr, cls_env
        else:
            return
        declared = RECEIVERS.get(name.lstrip("_"))
        if declared is not None and isinstance(inferred, str) and inferred != MODULE and inferred != declared:
            self.problem(f"{name} is a {inferred} here (the bindings' return type), but RECEIVERS says {declared}")
        if declared is not None:
            self.receivers_used.add(name.lstrip("_"))
        result = inferred if inferred is not None else declared
        if result is not None:
            store[name] = result
        else:
            store.pop(name, None)

    def _type(self, node, env, cls_env):
        if isinstance(node, ast.Name):
            return MODULE if node.id in MODULE_NAMES and node.id not in env else env.get(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return MODULE if node.attr == "trt" else cls_env.get(node.attr)
            owner = self._type(node.value, env, cls_env)
            if isinstance(owner, str) and owner in self.classes:
                return self.returns(owner, node.attr)
            return None
        if isinstance(node, ast.Call):
            chain = self._chain(node.func, env, cls_env)
            if chain and len(chain) == 1 and chain[0] in self.classes:
                return chain[0]
            if isinstance(node.func, ast.Attribute):
                owner = self._type(node.func.value, env, cls_env)
                if isinstance(owner, str) and owner in self.classes:
                    return self.returns(owner, node.func.attr)
            return None
        if isinstance(node, ast.Subscript):
            inner = self._type(node.value, env, cls_env)
            return inner[1] if isinstance(inner, tuple) and inner[0] in ("list", "dict") else None
        if isinstance(node, (ast.ListComp, ast.GeneratorExp)):
            elt = self._type(node.elt, env, cls_env)
            return ("list", elt) if elt else None
        if isinstance(node, ast.DictComp):
            elt = self._type(node.value, env, cls_env)
            return ("dict", elt) if elt else None
        if isinstance(node, ast.IfExp):
            return self._type(node.body, env, cls_env) or self._type(node.orelse, env, cls_env)
        return None

    def _chain(self, node, env, cls_env):
        """['A', 'B'] for trt.A.B (also getattr(trt.A, "B", d)), else None."""
        if isinstance(node, ast.Attribute):
            head = self._chain(node.value, env, cls_env)
            return head + [node.attr] if head is not None else None
        if self._type(node, env, cls_env) == MODULE:
            return []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            head = self._chain(node.args[0], env, cls_env)
            return head + [node.args[1].value] if head is not None else None
        return None

    @staticmethod
    def _walk(root):
        """ast.walk, but not into nested functions, lambdas or classes (their own scopes)."""
        todo = [root]
        while todo:
            n = todo.pop()
            yield n
            todo.extend(c for c in ast.iter_child_nodes(n)
                        if not isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)))

    def _exprs(self, root, env, cls_env, guards) -> None:
        """Record every use inside one statement or expression (not inside nested functions or classes)."""
        inner_chain_nodes = set()  # Attribute nodes that are links of a longer module chain
        calls = {}  # id(func node) -> the Call
        sets = set()
        local_guards = {}  # id(node) -> extra guards (inside an IfExp body guarded by hasattr)
        for n in self._walk(root):
            if isinstance(n, ast.Call):
                calls[id(n.func)] = n
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute):
                inner_chain_nodes.add(id(n.value))
            if isinstance(n, (ast.Assign, ast.AugAssign)):
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                    if isinstance(t, ast.Attribute):
                        sets.add(id(t))
            if isinstance(n, ast.IfExp):
                g = self._guards_in(n.test)
                for m in ast.walk(n.body):
                    local_guards[id(m)] = local_guards.get(id(m), frozenset()) | g
        for n in self._walk(root):
            g = guards | local_guards.get(id(n), frozenset())
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("getattr", "hasattr") \
                    and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant):
                self._use(n.args[0], n.args[1].value, env, cls_env, kind="get", optional=True)
                continue
            if not isinstance(n, ast.Attribute) or id(n) in inner_chain_nodes:
                continue
            chain = self._chain(n, env, cls_env)
            call = calls.get(id(n))
            call_info = None
            if call is not None:
                call_info = (len([a for a in call.args if not isinstance(a, ast.Starred)]),
                             [k.arg for k in call.keywords if k.arg is not None],
                             any(isinstance(a, ast.Starred) for a in call.args)
                             or any(k.arg is None for k in call.keywords), True)
            if chain is not None and chain:
                guarded = (ast.unparse(n.value), n.attr) in g
                self.use_chain(chain, call=None if call_info is None else call_info[:3], optional=guarded)
                continue
            kind = "set" if id(n) in sets else "call" if call_info else "get"
            self._use(n.value, n.attr, env, cls_env, kind=kind, call=call_info,
                      optional=(ast.unparse(n.value), n.attr) in g)

    def _use(self, value, attr, env, cls_env, *, kind, call=None, optional=False) -> None:
        chain = self._chain(value, env, cls_env)
        if chain is not None:
            self.use_chain([*chain, attr], optional=optional)
            return
        owner = self._type(value, env, cls_env)
        if isinstance(owner, str) and owner in self.classes:
            self.use_member(owner, attr, kind=kind, call=call, optional=optional)
        elif isinstance(value, ast.Name) and value.id == "self":
            return  # the project's own object
        elif isinstance(value, ast.Name) and value.id in NOT_TENSORRT:
            self.not_tensorrt_used.add(value.id)
        elif attr in self.trt_members and not isinstance(owner, tuple):
            self.untyped.append(f"{self.where}: {ast.unparse(value)}.{attr}")


def check(trt, paths) -> dict:
    c = Checker(trt)
    for p in paths:
        c.check_file(Path(p))
    unused = sorted(set(RECEIVERS) - c.receivers_used) + sorted(set(NOT_TENSORRT) - c.not_tensorrt_used)
    return {"version": trt.__version__, "checked": sorted(c.checked), "problems": c.problems,
            "optional_missing": sorted(c.optional_missing), "untyped": c.untyped, "unused_receivers": unused}
