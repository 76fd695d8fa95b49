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


def health(obj: dict, script: str | None = None) -> dict:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=False)
    assert runtime.eval("_VERSION") == "Lua 5.1"
    runtime.execute(ARGOCD_SANDBOX)
    runtime.globals().obj = to_lua(runtime, obj)
    result = runtime.execute(script or (HEALTH_DIR / "health.lua").read_text())
    return {k: v for k, v in dict(result).items()}
