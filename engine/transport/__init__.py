"""What crosses process boundaries: the shared-memory rings that carry frames from the capture
process to the workers (ring.py, csrc/ring.c), the message channels between every process
(ipc.py), the dispatch key that decides which worker a frame goes to (dispatch.py), and the
stager that batches frames per worker and publishes them into the rings (stager.py: the C
csrc/capture.c, chosen once, or its plain-Python reference).

Must not know what the processes do with what they receive.
"""
