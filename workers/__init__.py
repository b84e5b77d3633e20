"""A batch of frames -> events: link/IP/transport decode, DNS/HTTP/TLS/QUIC extraction, judgement.

Must not know how frames were captured or how trails are stored on disk.
"""
