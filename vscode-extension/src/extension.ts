/**
 * Tandem for VS Code: starts `tandem lsp` over stdio and lets vscode-languageclient's built-in
 * inline completion feature show its suggestions. Thin on purpose: prompts, caching, cancellation
 * and post-processing live in the language server. What is here: the status bar, the commands,
 * the on/off switch, and accepted/dismissed feedback.
 */
import * as fs from "node:fs";
import * as vscode from "vscode";
import {
  LanguageClient,
  type LanguageClientOptions,
  type ServerOptions,
  DidChangeConfigurationNotification,
  State,
  TransportKind,
} from "vscode-languageclient/node";

import { FeedbackTracker, type Feedback } from "./feedback";
import { resolveServerCommand } from "./serverCommand";
import { needsRestart } from "./settings";
import { StatusModel } from "./status";

const FEEDBACK = "tandem/completionFeedback";
const ENGINE_STATUS = "tandem/engineStatus";
const CURSOR_MOVED = "tandem/cursorMoved"; // where the caret is: the server warms the engine there once it rests

interface EngineStatus {
  state: string;
  detail: string;
}

class Tandem implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private readonly status = new StatusModel();
  private readonly feedback = new FeedbackTracker();
  private readonly item = vscode.window.createStatusBarItem("tandem.status", vscode.StatusBarAlignment.Right, 100);
  private readonly log = vscode.window.createOutputChannel("Tandem", { log: true });

  constructor() {
    this.item.name = "Tandem";
    this.item.command = "tandem.toggle";
    this.status.enabled = config().get<boolean>("enabled", true);
    this.render();
    this.item.show();
  }

  async start(): Promise<void> {
    const settings = config();
    const folders = (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath);
    const resolved = resolveServerCommand(settings.get<string>("pythonPath", ""), settings.get<string>("serverUrl", "http://127.0.0.1:8080"), {
      platform: process.platform, env: process.env, workspaceFolders: folders, isFile: (file) => fs.existsSync(file),
    });
    this.log.info(`Starting the language server: ${resolved.command} ${resolved.args.join(" ")} (from ${resolved.source})`);
    const serverOptions: ServerOptions = { command: resolved.command, args: resolved.args, transport: TransportKind.stdio };
    const clientOptions: LanguageClientOptions = {
      documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
      outputChannel: this.log,
      middleware: { provideInlineCompletionItems: (document, position, context, token, next) => this.provide(document, position, context, token, next) },
    };
    const client = new LanguageClient("tandem", "Tandem", serverOptions, clientOptions);
    this.client = client;
    client.onDidChangeState((change) => {
      this.status.serverRunning = change.newState === State.Running;
      this.render();
    });
    client.onNotification(ENGINE_STATUS, (params: EngineStatus) => {
      this.status.engineReported(params.state, params.detail);
      this.render();
    });
    try {
      await client.start();
    } catch (error) {
      this.log.info(`The language server did not start: ${String(error)}. Set tandem.pythonPath to the Python that has Tandem installed.`);
    }
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (client !== undefined) await client.dispose();
    this.status.serverRunning = false;
    this.status.engineReported("unknown", "");
    this.render();
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  async toggle(): Promise<void> {
    await config().update("enabled", !this.status.enabled, vscode.ConfigurationTarget.Global);
  }

  settingsChanged(event: vscode.ConfigurationChangeEvent): void {
    if (event.affectsConfiguration("tandem.enabled")) {
      this.status.enabled = config().get<boolean>("enabled", true);
      this.render();
    }
    if (needsRestart((section) => event.affectsConfiguration(section))) {
      this.log.info("A launch setting changed: restarting the language server.");
      void this.restart();
    } else if (event.affectsConfiguration("tandem") && this.client?.state === State.Running) {
      // the pull model: the server answers this by asking for `tandem` through workspace/configuration
      void this.client.sendNotification(DidChangeConfigurationNotification.type, { settings: null });
    }
  }

  cursorMoved(editor: vscode.TextEditor | undefined): void {
    const client = this.client;
    if (editor === undefined || client?.state !== State.Running || !this.status.enabled) return;
    const { selection, document } = editor;
    if (!selection.isEmpty || !["file", "untitled"].includes(document.uri.scheme)) return;
    void client.sendNotification(CURSOR_MOVED, { uri: document.uri.toString(), line: selection.active.line, character: selection.active.character });
  }

  accepted(requestId: unknown): void {
    if (typeof requestId === "string") this.send(this.feedback.accepted(requestId));
  }

  showLog(): void {
    this.log.show(true);
  }

  dispose(): void {
    void this.stop();
    this.item.dispose();
    this.log.dispose();
  }

  private async provide(
    document: vscode.TextDocument, position: vscode.Position, context: vscode.InlineCompletionContext, token: vscode.CancellationToken,
    next: (document: vscode.TextDocument, position: vscode.Position, context: vscode.InlineCompletionContext, token: vscode.CancellationToken)
      => vscode.ProviderResult<vscode.InlineCompletionItem[] | vscode.InlineCompletionList>,
  ): Promise<vscode.InlineCompletionItem[] | vscode.InlineCompletionList | undefined | null> {
    if (!this.status.enabled) return undefined;
    const started = Date.now();
    this.status.requestStarted();
    this.render();
    let latency: number | undefined;
    try {
      const result = await next(document, position, context, token);
      const items = result === undefined || result === null ? [] : Array.isArray(result) ? result : result.items;
      if (!token.isCancellationRequested) {
        const ids = items.map((item) => item.command?.arguments?.[0] as unknown).filter((id): id is string => typeof id === "string");
        this.send(this.feedback.showing(ids));
        if (items.length > 0) latency = Date.now() - started;
      }
      return result;
    } finally {
      this.status.requestFinished(latency);
      this.render();
    }
  }

  private send(events: Feedback[]): void {
    const client = this.client;
    if (client?.state !== State.Running) return;
    for (const event of events) void client.sendNotification(FEEDBACK, event);
  }

  private render(): void {
    const view = this.status.view();
    this.item.text = view.text;
    this.item.tooltip = view.tooltip;
    this.item.backgroundColor = view.warning ? new vscode.ThemeColor("statusBarItem.warningBackground") : undefined;
  }
}

function config(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration("tandem");
}

let tandem: Tandem | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const instance = new Tandem();
  tandem = instance;
  context.subscriptions.push(
    instance,
    vscode.commands.registerCommand("tandem.toggle", () => instance.toggle()),
    vscode.commands.registerCommand("tandem.trigger", () => vscode.commands.executeCommand("editor.action.inlineSuggest.trigger")),
    vscode.commands.registerCommand("tandem.showLog", () => { instance.showLog(); }),
    vscode.commands.registerCommand("tandem.restart", () => instance.restart()),
    vscode.commands.registerCommand("tandem.accepted", (requestId: unknown) => { instance.accepted(requestId); }),
    vscode.workspace.onDidChangeConfiguration((event) => { instance.settingsChanged(event); }),
    vscode.window.onDidChangeTextEditorSelection((event) => { instance.cursorMoved(event.textEditor); }),
    vscode.window.onDidChangeActiveTextEditor((editor) => { instance.cursorMoved(editor); }),
  );
  await instance.start();
}

export async function deactivate(): Promise<void> {
  await tandem?.stop();
  tandem = undefined;
}
