#!/usr/bin/env python3
"""`cargo xtask bench --trees` runs this: onnxruntime's time per `InferenceSession.run` call on
the ONNX conversion of a tree model (onnxmltools, `fixtures/trees/generate.py`), at a batch
size, on the rows of the fixture's reference file tiled to the batch.

    trees_peer.py <model.onnx> <rows.expected.json> <batch> <seconds>

Prints `{"batch": B, "calls": N, "ns_per_call": T}`: the median of five timed rounds after a
warm-up, as the native benchmark does.
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort

model, rows_file, batch, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
with open(rows_file) as f:
    rows = [[np.nan if v is None else v for v in r] for r in json.load(f)["rows"]]
x = np.array([rows[i % len(rows)] for i in range(batch)], dtype=np.float32)
options = ort.SessionOptions()
# The converted models declare a batch of 1 for `label`; onnxruntime warns on every call.
options.log_severity_level = 3
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
feed = {session.get_inputs()[0].name: x}
start = time.perf_counter()
calls = 0
while time.perf_counter() - start < seconds / 6:
    session.run(None, feed)
    calls += 1
rounds = []
for _ in range(5):
    t = time.perf_counter()
    for _ in range(calls):
        session.run(None, feed)
    rounds.append((time.perf_counter() - t) * 1e9 / calls)
rounds.sort()
print(json.dumps({"batch": batch, "calls": calls, "ns_per_call": round(rounds[2], 1)}))
