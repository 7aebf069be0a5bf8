"""A site's knowledge base: its documents read into passages under their headings, redacted by the
guard, and indexed for retrieval in the chat store (SQLite FTS5, BM25)."""
