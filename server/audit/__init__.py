"""The audit log: one hash-chained, append-only record per gateway call, signed checkpoints,
content kept apart so it can expire; and the tools people review it with."""

from .log import AuditConfig, AuditLog, Entry, Opened
from .review import AuditReader, Filters, Verification

__all__ = ["AuditConfig", "AuditLog", "AuditReader", "Entry", "Filters", "Opened", "Verification"]
