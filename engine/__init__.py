"""Processes and bytes in motion: capture (files and live), the event log, the CLI, configuration.

Must not decode protocols beyond what dispatching frames needs; workers/ judges packets.
"""
