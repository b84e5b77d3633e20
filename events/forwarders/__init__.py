"""Forwarding events out of the log: to a Maltrail server (LOG_SERVER), a SIEM (CEF over syslog),
Logstash (JSON), ECS JSON lines, webhooks, and our own server.

Every destination follows the compressed log from its own saved place (cursor.py), in its own
thread (base.py), over UDP, TCP or TLS (transports.py): the log is the queue, so a collector that
is down costs nothing but its own lag, and a reliable destination loses nothing through an outage
or a restart. The sensor runs them in a process of their own (engine/processes/forwarder.py).
Must not know how events are detected or import the sensor's processes.
"""
