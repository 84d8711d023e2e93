"""Pins the installed lark_oapi's layout that lark_sdk's lean load relies on.

The lean load (`feishu_bot.feishu.lark_sdk.load_sdk`) imports ``lark_oapi.ws.client`` without
the package ``__init__`` and with a stand-in for ``event.dispatcher_handler``. That is only
sound while the SDK is laid out as in 1.7.5; an upgrade that moves any of it must fail here,
each assertion naming what moved, rather than at run time in production. The checks read the
SDK's files (``ast``), so they import nothing of it; the last two run fresh interpreters.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from feishu_bot.feishu.lark_sdk import (
    CLIENT_METHODS,
    DISPATCHER_MODULE,
    SDK_MODULES,
    SDK_VERSION,
)

ROOT = Path(__file__).resolve().parents[2]
_SPEC = importlib.util.find_spec("lark_oapi")  # finds the package without importing it
assert _SPEC is not None and _SPEC.submodule_search_locations is not None
SDK_DIR = Path(next(iter(_SPEC.submodule_search_locations)))
CLIENT_PY = SDK_DIR / "ws" / "client.py"

# The modules ws/client.py imports from the SDK, and the names, in 1.7.5. Each is loaded for
# real by the lean load except DISPATCHER_MODULE (a stand-in while the client is imported).
CLIENT_SDK_IMPORTS = {
    "lark_oapi.core.cache": {"ExpiringCache"},
    "lark_oapi.core.client_assertion": {"build_proxy_url", "extract_aud_from_url"},
    "lark_oapi.core.const": {"UTF_8", "FEISHU_DOMAIN", "USER_AGENT", "X_TARGET_SERVICE"},
    "lark_oapi.core.enum": {"LogLevel"},
    "lark_oapi.core.json": {"JSON"},
    "lark_oapi.core.log": {"logger"},
    "lark_oapi.core.utils": {"Strings"},
    "lark_oapi.core.utils.user_agent": {"build_user_agent"},
    DISPATCHER_MODULE: {"EventDispatcherHandler"},
    "lark_oapi.ws.connection_config": {
        "build_connection_url",
        "snapshot_connection_headers",
        "validate_connection_host",
    },
    "lark_oapi.ws.const": {"*"},
    "lark_oapi.ws.enum": {"FrameType", "MessageType"},
    "lark_oapi.ws.exception": {"*"},
    "lark_oapi.ws.model": {"*"},
    "lark_oapi.ws.pb.google.protobuf.internal.containers": {"RepeatedCompositeFieldContainer"},
    "lark_oapi.ws.pb.pbbp2_pb2": {"Frame"},
}
# Instance attributes WsSession and the gateway read or write on a Client.
CLIENT_ATTRIBUTES = {
    "_conn",
    "_conn_id",
    "_auto_reconnect",
    "_ping_interval",
    "_reconnect_interval",
    "_event_handler",
}


def _module_file(name: str) -> Path:
    parts = name.split(".")[1:]
    base = SDK_DIR.joinpath(*parts)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _client_tree() -> ast.Module:
    return ast.parse(CLIENT_PY.read_text(encoding="utf-8"), str(CLIENT_PY))


def _client_class(tree: ast.Module) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Client":
            return node
    raise AssertionError(f"{CLIENT_PY}: class Client is gone")


def test_installed_version_is_the_one_the_lean_load_was_written_for() -> None:
    installed = importlib.metadata.version("lark-oapi")
    assert installed == SDK_VERSION, (
        f"lark-oapi {installed} is installed, lark_sdk.SDK_VERSION is {SDK_VERSION}: "
        "re-check this file's pins against the new SDK, then update SDK_VERSION"
    )
    const = ast.parse((SDK_DIR / "core" / "const.py").read_text(encoding="utf-8"))
    versions = [
        node.value.value
        for node in const.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "VERSION" for t in node.targets)
        and isinstance(node.value, ast.Constant)
    ]
    assert versions == [SDK_VERSION], (
        f"lark_oapi/core/const.py VERSION is {versions}, expected [{SDK_VERSION!r}] "
        "(load_sdk reads it to warn about an unexpected SDK)"
    )


@pytest.mark.parametrize(
    "module", sorted({name for name, _ in SDK_MODULES} | {DISPATCHER_MODULE, "lark_oapi.event"})
)
def test_every_module_the_lean_load_uses_is_where_it_was(module: str) -> None:
    path = _module_file(module)
    assert path.is_file(), f"{module} moved: {path.relative_to(SDK_DIR.parent)} is gone"


def test_the_packages_on_the_way_do_not_pull_in_the_api_models() -> None:
    # Their __init__ runs during the lean load: a new import of lark_oapi.api there would
    # bring back the ~10 000 modules the lean load exists to avoid.
    for package in ("event", "ws", "core", "event/callback", "event/callback/model", "ws/pb"):
        text = (SDK_DIR / package / "__init__.py").read_text(encoding="utf-8")
        assert "api" not in {
            part
            for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.ImportFrom) and node.module
            for part in node.module.split(".")
        }, f"lark_oapi/{package}/__init__.py now imports from lark_oapi.api"


def test_ws_client_imports_exactly_what_the_lean_load_provides() -> None:
    found: dict[str, set[str]] = {}
    for node in _client_tree().body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lark_oapi"):
            found.setdefault(node.module or "", set()).update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert not alias.name.startswith("lark_oapi"), (
                    f"lark_oapi/ws/client.py now does `import {alias.name}`"
                )
    added = {m: n - CLIENT_SDK_IMPORTS.get(m, set()) for m, n in found.items()}
    gone = {m: n - found.get(m, set()) for m, n in CLIENT_SDK_IMPORTS.items()}
    assert not any(added.values()) and not any(gone.values()), (
        "lark_oapi/ws/client.py's SDK imports changed; new: "
        f"{ {m: sorted(n) for m, n in added.items() if n} }, gone: "
        f"{ {m: sorted(n) for m, n in gone.items() if n} }. Anything new from "
        f"{DISPATCHER_MODULE} must be added to the stand-in in lark_sdk._load_sdk"
    )


def test_the_dispatcher_type_is_only_an_annotation_in_the_ws_client() -> None:
    # The stand-in module holds lark_sdk.EventDispatcher under this name: harmless only
    # while client.py never instantiates or calls it.
    tree = _client_tree()
    annotations = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        for arg in (*fn.args.args, *fn.args.kwonlyargs)
        if arg.annotation is not None
        for node in ast.walk(arg.annotation)
    } | {
        id(node)
        for ann in ast.walk(tree)
        if isinstance(ann, ast.AnnAssign)
        for node in ast.walk(ann.annotation)
    }
    uses = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Name)
        and node.id == "EventDispatcherHandler"
        and id(node) not in annotations
    ]
    assert not uses, f"lark_oapi/ws/client.py uses EventDispatcherHandler at lines {uses}"


def test_the_ws_client_calls_only_do_without_validation_on_its_handler() -> None:
    called = {
        node.attr
        for node in ast.walk(_client_tree())
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "_event_handler"
    }
    assert called == {"_do_without_validation"}, (
        f"lark_oapi/ws/client.py now uses {sorted(called)} of its event handler; "
        "lark_sdk.EventDispatcher provides only _do_without_validation"
    )


def test_the_client_members_the_session_relies_on_are_there() -> None:
    cls = _client_class(_client_tree())
    methods = {
        node.name for node in cls.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    missing = sorted(set(CLIENT_METHODS) - methods)
    assert not missing, f"lark_oapi.ws.client.Client lost {missing}"
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assigned = {
        target.attr
        for node in ast.walk(init)
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id == "self"
    }
    missing = sorted(CLIENT_ATTRIBUTES - assigned)
    assert not missing, f"lark_oapi.ws.client.Client.__init__ no longer sets {missing}"


def test_the_ws_client_module_globals_the_session_replaces_are_there() -> None:
    tree = _client_tree()
    names = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Try)
        for stmt in (*node.body, *(s for h in node.handlers for s in h.body))
        if isinstance(stmt, ast.Assign)
        for target in stmt.targets
        if isinstance(target, ast.Name)
    }
    assert "loop" in names, "lark_oapi/ws/client.py no longer has its module global `loop`"
    imports = {a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names}
    assert "requests" in imports, "lark_oapi/ws/client.py no longer does `import requests`"


def _run(code: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


LEAN_PROBE = """
import json, sys
from feishu_bot.feishu import lark_sdk as ws_session
before = set(sys.modules)
sdk = ws_session.load_sdk()
import lark_oapi
try:
    lark_oapi.Client
    whole = True
except AttributeError:
    whole = False
print(json.dumps({
    "added": len(set(sys.modules) - before),
    "lark": sorted(m for m in sys.modules if m.startswith("lark_oapi")),
    "dispatcher_left": ws_session.DISPATCHER_MODULE in sys.modules,
    "whole_package": whole,
    "version": sdk.version,
}))
"""

# Measured with lark-oapi 1.7.5: 70 lark_oapi modules; the load adds ~280 modules in all
# (requests and urllib3, websockets, pycryptodome, the vendored protobuf). The whole package
# is ~10 000.
MAX_LARK_MODULES = 80
MAX_ADDED_MODULES = 350


def test_loading_the_sdk_in_a_fresh_interpreter_stays_lean() -> None:
    out = _run(LEAN_PROBE)
    lark = out["lark"]
    assert isinstance(lark, list)
    assert "lark_oapi.api" not in lark and not any(m.startswith("lark_oapi.api.") for m in lark)
    assert "lark_oapi.client" not in lark  # the REST client: the bot has its own
    assert not out["dispatcher_left"], "the stand-in dispatcher module stayed in sys.modules"
    assert not out["whole_package"], "the package __init__ ran"
    assert len(lark) <= MAX_LARK_MODULES, f"{len(lark)} lark_oapi modules: {lark}"
    added = out["added"]
    assert isinstance(added, int) and added <= MAX_ADDED_MODULES, added
    assert out["version"] == SDK_VERSION


def test_the_full_package_imported_first_is_used_as_it_is() -> None:
    # Some other code in the process imported lark_oapi whole: the lean load must not
    # replace its modules (two copies of one class would break isinstance checks).
    out = _run(
        "import json, lark_oapi\n"
        "from feishu_bot.feishu import lark_sdk as ws_session\n"
        "sdk = ws_session.load_sdk()\n"
        "print(json.dumps({'same': sdk.client_class is lark_oapi.ws.Client,"
        " 'json': sdk.json is lark_oapi.JSON}))\n"
    )
    assert out == {"same": True, "json": True}
