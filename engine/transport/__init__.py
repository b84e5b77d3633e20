"""What crosses process boundaries: the shared-memory rings that carry frames from the capture
process to the workers (ring.py, csrc/ring.c), the message channels between every process
(ipc.py), and the dispatch key that decides which worker a frame goes to (dispatch.py,
csrc/capture.c, the C capture path that stages frames into the rings).

Must not know what the processes do with what they receive.
"""
