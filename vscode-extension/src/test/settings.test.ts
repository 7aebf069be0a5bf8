import { strict as assert } from "node:assert";
import { test } from "node:test";

import { needsRestart } from "../settings";

test("the interpreter and the server URL restart the language server", () => {
  assert.equal(needsRestart((s) => s === "tandem.pythonPath"), true);
  assert.equal(needsRestart((s) => s === "tandem.serverUrl"), true);
});

test("completion settings are applied live", () => {
  for (const setting of ["tandem.maxTokens", "tandem.multiline", "tandem.enabled", "editor.fontSize"]) {
    assert.equal(needsRestart((s) => s === setting), false, setting);
  }
});
