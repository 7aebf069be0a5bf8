/**
 * What the status bar says. A pure model (no VS Code API) fed by the language server's
 * `tandem/engineStatus` notifications and by each completion request, so its states are unit-tested.
 */

export type EngineState = "unknown" | "starting" | "ready" | "unreachable";

export interface StatusView {
  text: string;
  tooltip: string;
  /** A warning background for states the developer should act on. */
  warning: boolean;
}

export class StatusModel {
  engine: EngineState = "unknown";
  engineDetail = "";
  enabled = true;
  serverRunning = false;
  inFlight = 0;
  lastLatencyMs: number | undefined;

  engineReported(state: string, detail: string): void {
    this.engine = isEngineState(state) ? state : "unknown";
    this.engineDetail = detail;
  }

  requestStarted(): void {
    this.inFlight += 1;
  }

  /** latencyMs is recorded only for requests that produced a suggestion. */
  requestFinished(latencyMs: number | undefined): void {
    this.inFlight = Math.max(0, this.inFlight - 1);
    if (latencyMs !== undefined) this.lastLatencyMs = Math.round(latencyMs);
  }

  view(): StatusView {
    const latency = this.lastLatencyMs === undefined ? "" : ` ${this.lastLatencyMs} ms`;
    const help = "Click to toggle Tandem's completions.";
    if (!this.enabled) return { text: "$(circle-slash) Tandem: off", tooltip: `Completions are off. ${help}`, warning: false };
    if (!this.serverRunning) return { text: "$(debug-disconnect) Tandem", tooltip: "The language server is not running. See Tandem: Show the language server's log.", warning: true };
    if (this.engine === "unreachable") {
      return { text: "$(warning) Tandem: unreachable", tooltip: `The engine is unreachable: ${this.engineDetail}`, warning: true };
    }
    if (this.inFlight > 0) return { text: `$(sync~spin) Tandem${latency}`, tooltip: "Generating a suggestion…", warning: false };
    if (this.engine === "starting" || this.engine === "unknown") {
      return { text: "$(loading~spin) Tandem: starting", tooltip: `Waiting for the engine ${this.engineDetail}`.trim(), warning: false };
    }
    const last = this.lastLatencyMs === undefined ? "" : ` Last suggestion in ${this.lastLatencyMs} ms.`;
    return { text: `$(check) Tandem${latency}`, tooltip: `Ready: ${this.engineDetail}.${last} ${help}`, warning: false };
  }
}

function isEngineState(state: string): state is EngineState {
  return state === "unknown" || state === "starting" || state === "ready" || state === "unreachable";
}
