"""The kserve SDK's REST client (KServe 0.21) against crossfade's gateway: health and readiness
as it parses them, V2 inference, and V1 `:predict` with `inputs`. Usage: kserve_check.py
http://HOST:PORT MODEL. Exits non-zero on any mismatch."""
import asyncio
import sys

from kserve import InferenceRESTClient, RESTConfig

base, model = sys.argv[1], sys.argv[2]
rows = [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]


async def main():
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    assert await v2.is_server_live(base) is True, "v2 server not live"
    assert await v2.is_server_ready(base) is True, "v2 server not ready"
    assert await v2.is_model_ready(base, model) is True, "v2 model not ready"
    answer = await v2.infer(
        base,
        {"id": "k1", "inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": rows}]},
        model_name=model,
    )
    labels = [o for o in answer.outputs if o.name == "label"][0].as_numpy().tolist()
    assert labels == [0, 2], labels
    await v2.close()
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", retries=0))
    assert await v1.is_server_live(base) is True, "v1 server not live"
    assert await v1.is_model_ready(base, model) is True, "v1 model not ready"
    for key in ("instances", "inputs"):
        answer = await v1.infer(base, {key: rows}, model_name=model)
        assert answer["predictions"] == [0, 2], (key, answer)
    await v1.close()
    print("kserve sdk ok")


asyncio.run(main())
