"""The sensor's processes: the supervisor and the children it starts (capture, workers, log
writer), what each child does first, what each may hold (privileges), the log directory they
claim, and the statistics they report.

Must not decode protocols beyond what dispatching frames needs; workers/ judges packets.
"""
