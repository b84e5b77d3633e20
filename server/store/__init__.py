"""The event store. Placeholder on this branch: i11-core owns this file (the interface)."""
