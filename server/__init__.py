"""The event server: Maltrail's second half (receive events from many sensors, store them by
day, serve them over HTTP).

Owns the server process (server/process.py), its UDP intake (server/intake.py) and the event store
behind one interface (server/store/). May import events/, config/, trailsdb/ and matchers/; must
never import engine/ or workers/ (the sensor's process model and packet path), and trusts no
sensor, datagram or browser (tests/test_layering.py holds the first rule).
"""
