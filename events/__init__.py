"""Events at rest and in flight, shared by the sensor and the server: the event record
(record.py), the compressed daily log (log/: write, read, follow, repair), safe places to write
(fsafety.py), the output formats (formats.py), `tail` (tail.py) and the forwarders (forwarders/).

Imports nothing else of this project: it must not know how events were detected, nor the
sensor's processes.
"""
