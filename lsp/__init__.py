"""The language server (pygls) that brings completions into editors. Built with the code-completion
issue; it will reach the engine only through the server's HTTP API."""
