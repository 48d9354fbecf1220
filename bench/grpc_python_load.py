"""One Python grpcio client in a closed loop, for the gRPC benchmark (bench/grpc.ts):
the client the tutorials use, whose C core costs less per call than grpc-js.

    python3 grpc_python_load.py '<spec JSON>'    (stubs from agent/grpc/proto on PYTHONPATH)

Prints one JSON line: rps, p50, p99 (ms), ok, errors, and the CPU this client used (% of a core).
"""
import json
import random
import struct
import sys
import time

import grpc

import grpc_predict_v2_pb2 as pb
import grpc_predict_v2_pb2_grpc as pb_grpc
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


def main():
    spec = json.loads(sys.argv[1])
    rng = random.Random(7)
    count = 1
    for d in spec["shape"]:
        count *= d
    blobs = [struct.pack("<%df" % count, *[rng.random() * 2 - 1 for _ in range(count)]) for _ in range(spec["images"])]
    # A Unix socket when the spec names one (grpc.socket), else TCP.
    target = "unix:" + spec["socket"] if spec.get("socket") else "%s:%d" % (spec["host"], spec["grpcPort"])
    channel = grpc.insecure_channel(target,
                                    options=[("grpc.max_receive_message_length", -1)])
    if spec["api"] == "grpc-tf":
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        requests = []
        for blob in blobs:
            r = predict_pb2.PredictRequest()
            r.model_spec.name = spec["model"]
            r.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT, tensor_content=blob,
                tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in spec["shape"]])))
            requests.append(r)
        call = stub.Predict
    else:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        requests = []
        for blob in blobs:
            r = pb.ModelInferRequest(model_name=spec["model"])
            t = r.inputs.add()
            t.name, t.datatype = "x", "FP32"
            t.shape.extend(spec["shape"])
            r.raw_input_contents.append(blob)
            requests.append(r)
        call = stub.ModelInfer
    start = time.perf_counter()
    begin, end = start + spec["warmupMs"] / 1000, start + (spec["warmupMs"] + spec["windowMs"]) / 1000
    latencies, errors, i, cpu0 = [], 0, 0, None
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        if cpu0 is None and t0 >= begin:
            cpu0 = time.process_time()
        try:
            call(requests[i % len(requests)], timeout=60)
            t1 = time.perf_counter()
            if t0 >= begin and t1 <= end:
                latencies.append((t1 - t0) * 1000)
        except grpc.RpcError:
            errors += 1
        i += 1
    cpu = (time.process_time() - (cpu0 or 0)) / (spec["windowMs"] / 1000) * 100
    latencies.sort()
    pick = lambda p: latencies[min(len(latencies) - 1, max(0, -(-len(latencies) * p // 100) - 1))] if latencies else None
    print(json.dumps({"rps": len(latencies) / (spec["windowMs"] / 1000), "p50": pick(50), "p99": pick(99),
                      "ok": len(latencies), "errors": errors, "genCpuPct": cpu}))


if __name__ == "__main__":
    main()
