"""Tandem's tests: one folder per part (engine, guard, audit, gateway, dialog, lsp) and e2e for
the default and code models end to end; helpers (clients, the scripted engine, waiting) here."""
