/**
 * Which command starts `tandem lsp`. Pure (the file system comes in as functions) so that the
 * search order is unit-tested: the Python setting, then $TANDEM_PYTHON, then a `.venv` with Tandem
 * in a workspace folder, then `tandem` on PATH.
 */
import * as path from "node:path";

export interface ServerCommand {
  command: string;
  args: string[];
  /** Where the command came from, for the log and the status bar's tooltip. */
  source: string;
}

export interface Lookup {
  platform: NodeJS.Platform;
  env: Record<string, string | undefined>;
  workspaceFolders: readonly string[];
  isFile: (file: string) => boolean;
}

export function venvPython(venv: string, platform: NodeJS.Platform): string {
  return platform === "win32" ? path.join(venv, "Scripts", "python.exe") : path.join(venv, "bin", "python");
}

function venvHasTandem(venv: string, platform: NodeJS.Platform, isFile: (file: string) => boolean): boolean {
  const script = platform === "win32" ? path.join(venv, "Scripts", "tandem.exe") : path.join(venv, "bin", "tandem");
  return isFile(venvPython(venv, platform)) && isFile(script);
}

function lspArgs(serverUrl: string): string[] {
  return ["lsp", "--server-url", serverUrl];
}

export function resolveServerCommand(pythonPath: string, serverUrl: string, lookup: Lookup): ServerCommand {
  const { platform, env, isFile } = lookup;
  const viaPython = (python: string, source: string): ServerCommand =>
    ({ command: python, args: ["-m", "server.cli", ...lspArgs(serverUrl)], source });
  if (pythonPath.trim() !== "") {
    return viaPython(pythonPath.trim(), "the tandem.pythonPath setting");
  }
  const fromEnv = env["TANDEM_PYTHON"];
  if (fromEnv !== undefined && fromEnv.trim() !== "") {
    return viaPython(fromEnv.trim(), "$TANDEM_PYTHON");
  }
  for (const folder of lookup.workspaceFolders) {
    const venv = path.join(folder, ".venv");
    if (venvHasTandem(venv, platform, isFile)) {
      return viaPython(venvPython(venv, platform), `the virtual environment ${venv}`);
    }
  }
  return { command: "tandem", args: lspArgs(serverUrl), source: "`tandem` on PATH" };
}
