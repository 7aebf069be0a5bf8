import { strict as assert } from "node:assert";
import { test } from "node:test";

import { FeedbackTracker } from "../feedback";

test("accepting sends accepted, and the accepted suggestion is not dismissed later", () => {
  const tracker = new FeedbackTracker();
  assert.deepEqual(tracker.showing(["cmpl-1"]), []);
  assert.deepEqual(tracker.accepted("cmpl-1"), [{ request_id: "cmpl-1", event: "accepted" }]);
  assert.deepEqual(tracker.showing(["cmpl-2"]), []);
});

test("a shown suggestion replaced by another, or by none, was dismissed", () => {
  const tracker = new FeedbackTracker();
  tracker.showing(["cmpl-1"]);
  assert.deepEqual(tracker.showing(["cmpl-2"]), [{ request_id: "cmpl-1", event: "dismissed" }]);
  assert.deepEqual(tracker.showing([]), [{ request_id: "cmpl-2", event: "dismissed" }]);
  assert.deepEqual(tracker.showing([]), []);
});

test("typing through a suggestion keeps its request id: not a dismissal", () => {
  const tracker = new FeedbackTracker();
  tracker.showing(["cmpl-1"]);
  assert.deepEqual(tracker.showing(["cmpl-1"]), []);
  assert.deepEqual(tracker.showing(["cmpl-1"]), []);
});
