"""Runs an Argo CD health.lua the way Argo CD does (gopher-lua, Lua 5.1; argo-cd util/lua/lua.go): the resource as
the global `obj`, the script as one chunk, its returned table read as {status, message}. Here with PUC Lua 5.1
through lupa, with the libraries Argo CD gives argocd-cm scripts: base, table, package and a safe os only (no
string, no math, no string methods) unless the user sets useOpenLibs."""
from pathlib import Path

from lupa import lua51

CUSTOMIZATIONS = Path(__file__).parents[2] / "argocd" / "resource_customizations"
HEALTH_DIR = CUSTOMIZATIONS / "kubetune.io" / "FineTuneJob"


ARGOCD_SANDBOX = """
string, math, io, debug, coroutine, dofile, loadfile = nil, nil, nil, nil, nil, nil, nil
getmetatable("").__index = nil
os = {time = os.time, date = os.date, clock = os.clock}
"""


def to_lua(runtime, value):
    """JSON → Lua as Argo CD converts it: objects and arrays become tables (arrays 1-based), null is absent."""
    if isinstance(value, dict):
        return runtime.table_from({k: to_lua(runtime, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, v) for v in value])
    return value


def sandbox(obj: dict, clock: int | None = None):
    """A Lua 5.1 runtime as Argo CD sets one up for argocd-cm scripts, with `obj` as the global; `clock` (Unix
    seconds) fixes the time os.date reads, for scripts whose result depends on it (the rerun action)."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=False)
    assert runtime.eval("_VERSION") == "Lua 5.1"
    runtime.execute(ARGOCD_SANDBOX)
    if clock is not None:
        runtime.execute(f"local date = os.date; os.date = function(f, t) return date(f, t or {int(clock)}) end")
    runtime.globals().obj = to_lua(runtime, obj)
    return runtime


def health(obj: dict, script: str | None = None) -> dict:
    result = sandbox(obj).execute(script or (HEALTH_DIR / "health.lua").read_text())
    return {k: v for k, v in dict(result).items()}


ACTIONS_DIR = HEALTH_DIR / "actions"


def from_lua(value, like=None):
    """Lua → JSON as Argo CD reads a returned object back: a table with keys 1..n is an array, and an empty table
    is an array where the object had one (Lua cannot tell `{}` from `[]`: argo-cd's cleanReturnedObj); integral
    numbers are integers."""
    if lua51.lua_type(value) == "table":
        items = dict(value.items())
        if not items:
            return [] if isinstance(like, list) else {}
        if all(isinstance(k, int) for k in items) and sorted(items) == list(range(1, len(items) + 1)):
            return [from_lua(items[i + 1], (like or [None] * len(items))[i] if isinstance(like, list) and
                             i < len(like) else None) for i in range(len(items))]
        return {k: from_lua(v, like.get(k) if isinstance(like, dict) else None) for k, v in items.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def discover(obj: dict) -> list[dict]:
    """The actions discovery.lua offers, as Argo CD lists them (by name)."""
    found = from_lua(sandbox(obj).execute((ACTIONS_DIR / "discovery.lua").read_text()))
    return [{"name": name, **found[name]} for name in sorted(found)]


def run_action(obj: dict, name: str, clock: int | None = None) -> dict:
    """The object an action's action.lua returns (Argo CD patches the live object with the difference)."""
    result = sandbox(obj, clock).execute((ACTIONS_DIR / name / "action.lua").read_text())
    return from_lua(result, obj)
