import { strict as assert } from "node:assert";
import { test } from "node:test";

import { StatusModel } from "../status";

function running(): StatusModel {
  const model = new StatusModel();
  model.serverRunning = true;
  return model;
}

test("starting until the engine is reported ready, then ready with the model", () => {
  const model = running();
  assert.match(model.view().text, /starting/);
  model.engineReported("starting", "http://127.0.0.1:8080");
  assert.match(model.view().text, /starting/);
  model.engineReported("ready", "SmolLM2-135M-Instruct");
  const view = model.view();
  assert.equal(view.text, "$(check) Tandem");
  assert.match(view.tooltip, /SmolLM2/);
  assert.equal(view.warning, false);
});

test("generating while a request is in flight, then the last latency", () => {
  const model = running();
  model.engineReported("ready", "m");
  model.requestStarted();
  model.requestStarted();
  assert.match(model.view().text, /sync~spin/);
  model.requestFinished(undefined); // superseded: no latency to show
  assert.match(model.view().text, /sync~spin/);
  model.requestFinished(412.4);
  assert.equal(model.view().text, "$(check) Tandem 412 ms");
  assert.match(model.view().tooltip, /412 ms/);
  model.requestFinished(undefined); // never below zero
  assert.equal(model.inFlight, 0);
});

test("unreachable is a warning that says why, and wins over generating", () => {
  const model = running();
  model.engineReported("unreachable", "no Tandem server at http://127.0.0.1:9");
  model.requestStarted();
  const view = model.view();
  assert.match(view.text, /unreachable/);
  assert.match(view.tooltip, /no Tandem server/);
  assert.equal(view.warning, true);
});

test("off, and a language server that is not running", () => {
  const model = running();
  model.enabled = false;
  assert.match(model.view().text, /off/);
  model.enabled = true;
  model.serverRunning = false;
  assert.equal(model.view().warning, true);
  assert.match(model.view().tooltip, /not running/);
});

test("an unknown state from a newer server reads as unknown", () => {
  const model = running();
  model.engineReported("warming", "");
  assert.equal(model.engine, "unknown");
});
