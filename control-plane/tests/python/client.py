"""A Python grpcio client of serin.v1: generates its stubs from proto/ into a temporary directory,
applies a policy, checks optimistic concurrency, lists proxies, and prints what it saw as JSON.

Usage: client.py PROTO_ROOT HOST:PORT
"""

import json
import os
import sys
import tempfile

import grpc
import grpc_tools
from grpc_tools import protoc


def generate(proto_root: str) -> str:
    out = tempfile.mkdtemp(prefix="serin-py-")
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = [f"serin/v1/{name}.proto" for name in ("types", "policy", "identity", "discovery", "admin", "telemetry")]
    rc = protoc.main(["protoc", f"-I{proto_root}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    return out


def main() -> None:
    proto_root, address, token = sys.argv[1], sys.argv[2], sys.argv[3]
    auth = [("authorization", f"Bearer {token}")]
    sys.path.insert(0, generate(proto_root))
    from serin.v1 import admin_pb2, admin_pb2_grpc, policy_pb2

    stub = admin_pb2_grpc.AdminStub(grpc.insecure_channel(address))
    policy = policy_pb2.TrafficPolicy(
        metadata=policy_pb2.PolicyMetadata(name="reviews", namespace="default"),
        spec=policy_pb2.TrafficPolicySpec(
            service="reviews",
            rules=[
                policy_pb2.Rule(
                    name="testers",
                    match=[policy_pb2.MatchBlock(headers={"end-user": policy_pb2.StringMatch(exact="jason")})],
                    route=[policy_pb2.VersionWeight(version="v3", weight=100)],
                )
            ],
            default=policy_pb2.DefaultRoute(
                route=[policy_pb2.VersionWeight(version="v1", weight=90), policy_pb2.VersionWeight(version="v2", weight=10)]
            ),
        ),
    )
    applied = stub.ApplyPolicy(admin_pb2.ApplyPolicyRequest(policy=policy, if_generation=0), timeout=10, metadata=auth)
    policy.spec.default.route[1].weight = 20
    try:
        stub.ApplyPolicy(admin_pb2.ApplyPolicyRequest(policy=policy, if_generation=7), timeout=10, metadata=auth)
        stale = "OK"
    except grpc.RpcError as e:
        stale = f"{e.code().name}: {e.details()}"
    proxies = stub.ListProxies(admin_pb2.ListProxiesRequest(), timeout=10, metadata=auth)
    print(
        json.dumps(
            {
                "outcome": admin_pb2.ApplyOutcome.Name(applied.outcome),
                "generation": applied.policy.metadata.generation,
                "stale_apply": stale,
                "proxies": [
                    {"pod": p.proxy.pod_name, "service": p.proxy.service, "in_sync": p.in_sync, "acked": p.acked_version}
                    for p in proxies.proxies
                ],
            }
        )
    )


if __name__ == "__main__":
    main()
