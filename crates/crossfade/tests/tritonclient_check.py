"""A real Open Inference (V2) client against crossfade's gateway: tritonclient[http], JSON and
binary tensors. Usage: tritonclient_check.py HOST:PORT MODEL. Exits non-zero on any mismatch."""
import sys

import numpy as np
import tritonclient.http as httpclient

url, model = sys.argv[1], sys.argv[2]
client = httpclient.InferenceServerClient(url)
assert client.is_server_live(), "server not live"
assert client.is_server_ready(), "server not ready"
assert client.is_model_ready(model), "model not ready"
meta = client.get_model_metadata(model)
assert meta["inputs"][0]["name"] == "X", meta
x = np.array([[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]], dtype=np.float32)
for binary in (False, True):
    inp = httpclient.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("label", binary_data=binary)
    result = client.infer(model, [inp], outputs=[out], request_id="check")
    labels = result.as_numpy("label").tolist()
    assert labels == [0, 2], (binary, labels)
    assert result.get_response()["id"] == "check"
# Defaults: binary input, every output.
inp = httpclient.InferInput("X", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
result = client.infer(model, [inp])
probs = result.as_numpy("probabilities")
assert probs.shape == (2, 3) and abs(float(probs.sum()) - 2.0) < 1e-4, probs
print("tritonclient ok")
