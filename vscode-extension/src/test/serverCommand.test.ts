import { strict as assert } from "node:assert";
import * as path from "node:path";
import { test } from "node:test";

import { resolveServerCommand, type Lookup } from "../serverCommand";

const URL = "http://127.0.0.1:8080";

function lookup(files: string[], env: Record<string, string> = {}, folders: string[] = ["/home/dev/shop", "/home/dev/tandem"]): Lookup {
  return { platform: "linux", env, workspaceFolders: folders, isFile: (file) => files.includes(file) };
}

test("the pythonPath setting wins and runs the server module", () => {
  const got = resolveServerCommand(" /opt/tandem/.venv/bin/python ", URL, lookup([], { TANDEM_PYTHON: "/elsewhere/python" }));
  assert.deepEqual(got.command, "/opt/tandem/.venv/bin/python");
  assert.deepEqual(got.args, ["-m", "server.cli", "lsp", "--server-url", URL]);
  assert.match(got.source, /tandem.pythonPath/);
});

test("$TANDEM_PYTHON comes next", () => {
  const got = resolveServerCommand("", URL, lookup([], { TANDEM_PYTHON: "/elsewhere/python" }));
  assert.equal(got.command, "/elsewhere/python");
});

test("a workspace .venv is used only when Tandem is installed in it", () => {
  const shopPython = "/home/dev/shop/.venv/bin/python";
  const tandemVenv = "/home/dev/tandem/.venv";
  const files = [shopPython, path.join(tandemVenv, "bin", "python"), path.join(tandemVenv, "bin", "tandem")];
  const got = resolveServerCommand("", URL, lookup(files));
  assert.equal(got.command, path.join(tandemVenv, "bin", "python"));
  assert.match(got.source, /virtual environment/);
});

test("Windows virtual environments have Scripts/python.exe", () => {
  const venv = path.join("C:/work/tandem", ".venv");
  const files = [path.join(venv, "Scripts", "python.exe"), path.join(venv, "Scripts", "tandem.exe")];
  const got = resolveServerCommand("", URL, { platform: "win32", env: {}, workspaceFolders: ["C:/work/tandem"], isFile: (f) => files.includes(f) });
  assert.equal(got.command, path.join(venv, "Scripts", "python.exe"));
});

test("otherwise the tandem command on PATH, with the server URL", () => {
  const got = resolveServerCommand("   ", "http://10.0.0.5:9000", lookup([]));
  assert.deepEqual([got.command, ...got.args], ["tandem", "lsp", "--server-url", "http://10.0.0.5:9000"]);
});
