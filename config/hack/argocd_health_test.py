#!/usr/bin/env python3
"""Run an Argo CD health check's tests (health_test.yaml + testdata/) with a real Lua 5.1.

Argo CD runs health.lua with gopher-lua, a Lua 5.1 dialect, with `obj` set to the live object.
This runner converts each testdata object to a Lua table literal, runs health.lua under lua5.1
(without io, os, require and friends, which a health check must not need) and compares the
returned status and message with the test's healthStatus. It also checks that the Lua's
TERMINAL_REASONS list equals the one in crds/src/conditions.rs.

Usage: argocd_health_test.py CHECK_DIR [--rust-conditions crds/src/conditions.rs] [--lua lua5.1]
"""

import argparse
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


class StringTimestampLoader(yaml.SafeLoader):
    """YAML as Argo CD sees it (via JSON): timestamps stay strings."""


StringTimestampLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def lua_string(text):
    out = []
    for byte in text.encode("utf-8"):
        if byte in b'"\\':
            out.append("\\" + chr(byte))
        elif 32 <= byte < 127:
            out.append(chr(byte))
        else:
            out.append("\\%03d" % byte)  # Lua 5.1 has only decimal escapes, up to 3 digits
    return '"' + "".join(out) + '"'


def lua_literal(value):
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        items = ("[%s] = %s" % (lua_literal(str(k)), lua_literal(v))
                 for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    raise TypeError("cannot express %r in Lua" % (value,))


HARNESS = """
local check = assert(loadfile(%(health)s))
local env = {}
for k, v in pairs(_G) do env[k] = v end
for _, name in ipairs({"io", "os", "package", "require", "module", "debug",
                       "dofile", "loadfile", "load", "loadstring"}) do env[name] = nil end
env._G = env
env.obj = %(obj)s
setfenv(check, env)
local hs = check()
assert(type(hs) == "table", "health.lua must return a table")
assert(type(hs.status) == "string", "hs.status must be a string")
assert(hs.message == nil or type(hs.message) == "string", "hs.message must be a string")
io.write(hs.status, "\\n", hs.message or "")
"""


def run_check(lua, health, obj):
    script = HARNESS % {"health": lua_string(str(health)), "obj": lua_literal(obj)}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", encoding="utf-8") as f:
        f.write(script)
        f.flush()
        proc = subprocess.run([lua, f.name], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip() or "lua exited with %d" % proc.returncode).splitlines()[0])
    status, _, message = proc.stdout.partition("\n")
    return status, message


def rust_terminal_reasons(path):
    text = pathlib.Path(path).read_text(encoding="utf-8")
    consts = dict(re.findall(r'pub const (\w+): &str = "([^"]*)";', text))
    block = re.search(r"pub const TERMINAL_REASONS: \[&str; \d+\] = \[(.*?)\];", text, re.S)
    if not block:
        raise SystemExit("%s: TERMINAL_REASONS not found" % path)
    names = re.findall(r"reasons::(\w+)", block.group(1))
    return [consts[n] for n in names]


def lua_terminal_reasons(path):
    block = re.search(r"local TERMINAL_REASONS = \{(.*?)\}", path.read_text(encoding="utf-8"), re.S)
    if not block:
        raise SystemExit("%s: TERMINAL_REASONS not found" % path)
    return re.findall(r'"([^"]*)"', block.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check_dir", type=pathlib.Path)
    parser.add_argument("--rust-conditions", help="crds/src/conditions.rs, to compare reasons")
    parser.add_argument("--lua", default="lua5.1")
    args = parser.parse_args()
    health = args.check_dir / "health.lua"
    tests = yaml.safe_load((args.check_dir / "health_test.yaml").read_text(encoding="utf-8"))["tests"]

    passed = failed = 0
    if args.rust_conditions:
        rust, lua = rust_terminal_reasons(args.rust_conditions), lua_terminal_reasons(health)
        if rust == lua:
            passed += 1
        else:
            failed += 1
            print("FAIL TERMINAL_REASONS differ: %s has %s, %s has %s"
                  % (args.rust_conditions, rust, health, lua))

    used = set()
    for test in tests:
        input_path = test["inputPath"]
        used.add((args.check_dir / input_path).resolve())
        want = test["healthStatus"]
        obj = yaml.load((args.check_dir / input_path).read_text(encoding="utf-8"),
                        Loader=StringTimestampLoader)
        try:
            status, message = run_check(args.lua, health, obj)
        except RuntimeError as e:
            print("FAIL %s: health.lua failed: %s" % (input_path, e))
            failed += 1
            continue
        problems = []
        if status not in HEALTH_STATUSES:
            problems.append("status %r is not an Argo CD health status" % status)
        if status != want["status"]:
            problems.append("status: want %r, got %r" % (want["status"], status))
        if "message" in want and message != want["message"]:
            problems.append("message: want %r, got %r" % (want["message"], message))
        if problems:
            failed += 1
            print("FAIL %s: %s" % (input_path, "; ".join(problems)))
        else:
            passed += 1
            print("ok   %s: %s %r" % (input_path, status, message))

    testdata = {p.resolve() for p in (args.check_dir / "testdata").glob("*.yaml")}
    for orphan in sorted(testdata - used):
        failed += 1
        print("FAIL testdata/%s: no test in health_test.yaml uses it" % orphan.name)
    print("argocd-health: %d passed, %d failed" % (passed, failed))
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
