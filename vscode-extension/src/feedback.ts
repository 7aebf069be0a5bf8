/**
 * Accepted and dismissed suggestions, for the language server's `tandem/completionFeedback`.
 * VS Code tells an extension when a suggestion is accepted (the item's command) but never when it
 * is dismissed, so, as Tabby does, a shown suggestion counts as dismissed once a different one
 * (or none) replaces it without being accepted. Typing through a suggestion keeps its request id
 * (the language server's cache answers), so that is not a dismissal.
 */

export type FeedbackEvent = "accepted" | "dismissed";

export interface Feedback {
  request_id: string;
  event: FeedbackEvent;
}

export class FeedbackTracker {
  private shown: string | undefined;

  /** A request produced these suggestions (possibly none); returns the feedback to send. */
  showing(requestIds: readonly string[]): Feedback[] {
    const previous = this.shown;
    this.shown = requestIds[0];
    if (previous !== undefined && !requestIds.includes(previous)) {
      return [{ request_id: previous, event: "dismissed" }];
    }
    return [];
  }

  accepted(requestId: string): Feedback[] {
    if (this.shown === requestId) this.shown = undefined;
    return [{ request_id: requestId, event: "accepted" }];
  }
}
