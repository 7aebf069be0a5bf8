"""The support chat: a WebSocket dialog service (protocol v1), its SQLite store, and widget.js."""
