"""The stress phase of benches/serving.rs against a running `koala serve-model`, from Python (no
bench-profile build needed): a TTFT-like warm-up (32 concurrent clients, 3 rounds) and every other
token id as prompts (the embedding table resident), then 500 streaming /v1/completions requests
from 64 clients, every 5th client dropping its connection after 3 chunks. Prints the server's
VmRSS and RssAnon before, and once idle after each round, and the outcome counts.

The model is served as `m` and must have a vocabulary of 32,000 (the bench model that
scripts/bench_decode_hf.py builds):

    koala serve-model --model m=target/bench-model --listen 127.0.0.1:18100 &
    python3 scripts/serve_stress.py 18100 $! [rounds]
"""
import http.client, json, sys, threading, time

port, pid = int(sys.argv[1]), int(sys.argv[2])
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 1

def status(key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024.0
    return float("nan")

def request(i, drop):
    body = json.dumps({"model": "m", "prompt": [((i * 7919 + j * 104729) % 31000) + 100 for j in range(25)],
                       "max_tokens": 32, "temperature": 0, "stream": True})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        r.read(); c.close(); return "error" if r.status == 503 else f"other {r.status}"
    chunks = 0
    done = False
    while True:
        line = r.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            if line.strip() == b"data: [DONE]":
                done = True
                break
            chunks += 1
            if drop and chunks >= 3:
                c.close()
                return "cancelled"
    c.close()
    return "complete" if done else "other"

def warm():
    # As benches/serving.rs: a TTFT phase (32 concurrent clients, 3 rounds), then every other
    # token id (one per 4 KB page of the embedding table) as prompts of 1024.
    for rnd in range(3):
        ts = [threading.Thread(target=request, args=(100 * rnd + k, False)) for k in range(32)]
        [t.start() for t in ts]; [t.join() for t in ts]
    ids = list(range(0, 32000, 2))
    for start in range(0, len(ids), 1024):
        body = json.dumps({"model": "m", "prompt": ids[start:start + 1024], "max_tokens": 1, "temperature": 0})
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        c.getresponse().read(); c.close()

def health():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/health"); r = c.getresponse(); t = r.read(); c.close(); return t

warm()
time.sleep(1)
before = (status("VmRSS:"), status("RssAnon:"))
print(f"before: VmRSS {before[0]:.1f} MiB, RssAnon {before[1]:.1f} MiB", flush=True)
for rnd in range(rounds):
    counts = {}
    lock = threading.Lock()
    nxt = [0]
    def client(k):
        while True:
            with lock:
                i = nxt[0]; nxt[0] += 1
            if i >= 500:
                return
            try:
                res = request(1000 * (rnd + 1) + i, k % 5 == 4)
            except Exception as e:
                res = f"other {e}"
            with lock:
                counts[res] = counts.get(res, 0) + 1
    ts = [threading.Thread(target=client, args=(k,)) for k in range(64)]
    t0 = time.time()
    [t.start() for t in ts]; [t.join() for t in ts]
    time.sleep(2)
    print(f"round {rnd}: {counts} in {time.time() - t0:.1f} s; health {health()[:80]!r}", flush=True)
    print(f"   idle: VmRSS {status('VmRSS:'):.1f} MiB, RssAnon {status('RssAnon:'):.1f} MiB", flush=True)
after = (status("VmRSS:"), status("RssAnon:"))
print(f"after / before: VmRSS {after[0] / before[0]:.3f}x, RssAnon {after[1]:.1f} / {before[1]:.1f} MiB")
