"""The sensor: its processes (processes/), what crosses between them (transport/), where frames
come from (sources/), the single-process loop (inprocess.py), the control files (control_files.py),
finding the trail artifact and the private copy workers map (trail_artifact.py), the deployment
check (preflight.py).

Must not decode protocols beyond what dispatching frames needs; workers/ judges packets.
"""
