#!/usr/bin/env python3
"""A Python client for the koala trainer daemon (koala.trainer.v1), with grpcio.

The gRPC stubs are generated from proto/ with grpcio-tools on first use (into --gen-dir), so the
only requirements are `pip install grpcio grpcio-tools`.

    python client.py --addr 127.0.0.1:50051 --token-file token submit job.toml --watch
    python client.py --addr 127.0.0.1:50051 --token-file token list --state running
    python client.py ... get 3 | metrics 3 | watch 3 | cancel 3
    python client.py ... generate 3 --prompt "BEGINNING OF CONVERSATION: USER: Hi GPT:" --stop "</s>"
    python client.py ... generate 3 --prompt-ids 1,2,3 --temperature 0 --max-tokens 8

Every command prints JSON (one object per line), so notebooks and scripts can parse it.
"""
import argparse
import json
import os
import subprocess
import sys
import tomllib

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROTO_ROOT = os.path.join(REPO, "proto")
PROTO = "koala/trainer/v1/trainer.proto"


def load_stubs(gen_dir):
    """Generates (if needed) and imports the trainer_pb2 / trainer_pb2_grpc modules."""
    out = os.path.join(gen_dir, "koala", "trainer", "v1", "trainer_pb2.py")
    src = os.path.join(PROTO_ROOT, PROTO)
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        os.makedirs(gen_dir, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
             f"--python_out={gen_dir}", f"--grpc_python_out={gen_dir}", PROTO],
            check=True,
        )
    sys.path.insert(0, gen_dir)
    from koala.trainer.v1 import trainer_pb2, trainer_pb2_grpc  # noqa: E402

    return trainer_pb2, trainer_pb2_grpc


def spec_from_toml(pb, path):
    """A job file (the format `koala submit` reads) as a JobSpec."""
    with open(path, "rb") as f:
        d = tomllib.load(f)
    hyper = d.pop("hyperparameters", None)
    spec = pb.JobSpec(**d)
    if hyper:
        spec.hyperparameters.CopyFrom(pb.Hyperparameters(**hyper))
    return spec


def job_dict(pb, job):
    return {
        "id": job.id,
        "state": pb.JobState.Name(job.state).removeprefix("JOB_STATE_"),
        "name": job.spec.name,
        "step": job.step,
        "total_steps": job.total_steps,
        "last_loss": job.last_loss,
        "last_checkpoint": job.last_checkpoint,
        "attempts": job.attempts,
        "error": job.error,
    }


def event_dict(pb, ev):
    kind = ev.WhichOneof("kind")
    out = {"job_id": ev.job_id, "seq": ev.seq, "kind": kind}
    if kind == "state_changed":
        out["state"] = pb.JobState.Name(ev.state_changed.state).removeprefix("JOB_STATE_")
        out["message"] = ev.state_changed.message
    elif kind == "progress":
        p = ev.progress
        out.update(step=p.step, total_steps=p.total_steps, loss=p.loss, lr=p.lr,
                   tokens_per_s=p.tokens_per_s, eta_s=p.eta_s)
    elif kind == "checkpoint":
        out.update(step=ev.checkpoint.step, path=ev.checkpoint.path)
    elif kind == "error":
        out["message"] = ev.error.message
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", default=os.environ.get("KOALA_DAEMON", "127.0.0.1:50051"))
    ap.add_argument("--token-file", default=os.environ.get("KOALA_TOKEN_FILE"))
    ap.add_argument("--ca-cert", help="PEM CA certificate of a TLS daemon")
    ap.add_argument("--gen-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "_gen"))
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("submit")
    s.add_argument("job")
    s.add_argument("--watch", action="store_true")
    ls = sub.add_parser("list")
    ls.add_argument("--state", action="append", default=[])
    ls.add_argument("--page-size", type=int, default=50)
    for name in ("get", "metrics", "watch", "cancel"):
        sub.add_parser(name).add_argument("id", type=int)
    g = sub.add_parser("generate", help="sample a job's newest checkpoint (one JSON line per message)")
    g.add_argument("id", type=int, nargs="?", help="the job (or --model-dir)")
    g.add_argument("--model-dir", help="a model directory under the data root, if the daemon allows it")
    g.add_argument("--prompt", default="")
    g.add_argument("--prompt-ids", type=lambda s: [int(x) for x in s.split(",") if x])
    g.add_argument("--max-tokens", type=int, default=0)
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-p", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--stop", action="append", default=[])
    args = ap.parse_args(argv)

    import grpc

    pb, pb_grpc = load_stubs(args.gen_dir)
    token = os.environ.get("KOALA_TOKEN", "")
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    metadata = [("authorization", f"Bearer {token}")] if token else []
    if args.ca_cert:
        with open(args.ca_cert, "rb") as f:
            channel = grpc.secure_channel(args.addr, grpc.ssl_channel_credentials(f.read()))
    else:
        channel = grpc.insecure_channel(args.addr)
    stub = pb_grpc.TrainerServiceStub(channel)

    def watch(job_id):
        for ev in stub.WatchJob(pb.WatchJobRequest(id=job_id), metadata=metadata):
            print(json.dumps(event_dict(pb, ev)), flush=True)
        return stub.GetJob(pb.GetJobRequest(id=job_id), metadata=metadata)

    try:
        if args.cmd == "submit":
            job = stub.SubmitJob(spec_from_toml(pb, args.job), metadata=metadata)
            print(json.dumps(job_dict(pb, job)), flush=True)
            if args.watch:
                job = watch(job.id)
                print(json.dumps(job_dict(pb, job)))
                return 0 if job.state == pb.JOB_STATE_SUCCEEDED else 1
        elif args.cmd == "list":
            states = [pb.JobState.Value("JOB_STATE_" + s.upper()) for s in args.state]
            token_ = ""
            while True:
                page = stub.ListJobs(pb.ListJobsRequest(states=states, page_size=args.page_size,
                                                        page_token=token_), metadata=metadata)
                for job in page.jobs:
                    print(json.dumps(job_dict(pb, job)))
                if not page.next_page_token:
                    break
                token_ = page.next_page_token
        elif args.cmd == "get":
            print(json.dumps(job_dict(pb, stub.GetJob(pb.GetJobRequest(id=args.id), metadata=metadata))))
        elif args.cmd == "metrics":
            resp = stub.GetMetrics(pb.GetMetricsRequest(id=args.id), metadata=metadata)
            for p in resp.points:
                print(json.dumps({"step": p.step, "loss": p.loss, "lr": p.lr,
                                  "tokens_per_s": p.tokens_per_s, "time_ms": p.time_ms}))
        elif args.cmd == "watch":
            print(json.dumps(job_dict(pb, watch(args.id))))
        elif args.cmd == "cancel":
            print(json.dumps(job_dict(pb, stub.CancelJob(pb.CancelJobRequest(id=args.id), metadata=metadata))))
        elif args.cmd == "generate":
            req = pb.GenerateRequest(prompt=args.prompt, prompt_ids=args.prompt_ids or [],
                                     max_tokens=args.max_tokens, stop=args.stop)
            if args.model_dir:
                req.model_dir = args.model_dir
            else:
                req.job_id = args.id
            # Optional fields: set only what was given, so the daemon's defaults apply otherwise.
            for field in ("temperature", "top_p", "top_k", "seed"):
                if getattr(args, field) is not None:
                    setattr(req, field, getattr(args, field))
            for m in stub.Generate(req, metadata=metadata):
                out = {"text": m.text, "token_ids": list(m.token_ids)}
                if m.checkpoint:
                    out["checkpoint"] = m.checkpoint
                if m.finish_reason:
                    out.update(finish_reason=m.finish_reason, prompt_tokens=m.prompt_tokens,
                               completion_tokens=m.completion_tokens)
                print(json.dumps(out), flush=True)
    except grpc.RpcError as e:
        print(json.dumps({"error": e.code().name, "message": e.details()}))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
