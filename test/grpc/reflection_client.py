"""A client that knows no .proto file, as grpcurl works: it asks the server's reflection
service for the services and for the files that declare one, loads those descriptors into
a fresh descriptor pool (protobuf's own checks: every import present, every type name
resolved), builds the request message from JSON and calls the method.

    python3 reflection_client.py <target> '<json args>'

args: {"version": "v1" or "v1alpha", "service": "tensorflow.serving.PredictionService",
"method": "Predict", "request": {...}} (the request as protobuf JSON). Prints one JSON
document: the services listed, the files received, the method's message types and the
answer. Stubs for the reflection service itself come from agent/grpc/proto, on PYTHONPATH.
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from grpc_reflection.v1 import reflection_pb2 as v1, reflection_pb2_grpc as v1_grpc
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha, reflection_pb2_grpc as v1alpha_grpc

VERSIONS = {"v1": (v1, v1_grpc), "v1alpha": (v1alpha, v1alpha_grpc)}


def main():
    target, args = sys.argv[1], json.loads(sys.argv[2])
    pb, pb_grpc = VERSIONS[args["version"]]
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.ServerReflectionStub(channel)
    requests = [pb.ServerReflectionRequest(list_services=""), pb.ServerReflectionRequest(file_containing_symbol=args["service"])]
    listed, found = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    services = [s.name for s in listed.list_services_response.service]
    files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in found.file_descriptor_response.file_descriptor_proto]

    # A pool takes a file only after the files it imports.
    pool, added = descriptor_pool.DescriptorPool(), set()
    while len(added) < len(files):
        ready = [f for f in files if f.name not in added and all(d in added for d in f.dependency)]
        if not ready:
            raise SystemExit("imports missing from the reflection answer: %s" % sorted(
                {d for f in files for d in f.dependency} - {f.name for f in files}))
        for f in ready:
            pool.Add(f)
            added.add(f.name)

    method = pool.FindServiceByName(args["service"]).FindMethodByName(args["method"])
    factory = message_factory.MessageFactory(pool)
    request_class = factory.GetPrototype(method.input_type)
    response_class = factory.GetPrototype(method.output_type)
    call = channel.unary_unary("/%s/%s" % (args["service"], args["method"]),
                               request_serializer=request_class.SerializeToString,
                               response_deserializer=response_class.FromString)
    answer = call(json_format.ParseDict(args["request"], request_class()), timeout=10)
    print(json.dumps({
        "services": services,
        "files": [f.name for f in files],
        "input": method.input_type.full_name,
        "output": method.output_type.full_name,
        "answer": json_format.MessageToDict(answer, preserving_proto_field_name=True),
    }))


if __name__ == "__main__":
    main()
