"""The support chat: WebSocket dialog service, SQLite store and embeddable widget. Built with the
support-chat issue; it will reach the engine only through the gateway's interface."""
