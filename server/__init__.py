"""The event server (issue 11). Placeholder on this branch: i11-core owns this file."""
