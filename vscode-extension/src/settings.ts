/** Which `tandem.*` settings need a new language server; the rest reach it live through
 * `workspace/didChangeConfiguration` and `workspace/configuration`. */

/** Read when the process starts: the interpreter, and the server URL its first request may race. */
export const RESTART_SETTINGS: readonly string[] = ["tandem.pythonPath", "tandem.serverUrl"];

export function needsRestart(affects: (section: string) => boolean): boolean {
  return RESTART_SETTINGS.some((section) => affects(section));
}
