"""Where frames come from: capture files read by our own reader (pcapfile.py), libpcap for live
interfaces and as an alternative file reader (live.py), and synthetic traffic for the demo, the
tests and the benchmarks (synthetic.py).

Must not decode frames beyond their capture headers.
"""
