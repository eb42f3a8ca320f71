# Shared by the serve benches (sourced): process cleanup, loopback ports,
# timing, and the v1/v2 image pair. Each script sets $work first.
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
pids=(); trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
now() { date +%s.%N; }

# make_pair V1 V2 MIB: V1 half random 64 KiB blocks, half text; V2 = V1 with
# three 4 KiB rewrites.
make_pair() {
python3 - "$1" "$2" "$3" <<'PY'
import random, sys
random.seed(1)
words = [b"cuda", b"lib", b"init", b"blas", b"fft", b"torch", b"np", b"def"]
n = int(sys.argv[3]) << 20
out = bytearray()
while len(out) < n:
    out += random.randbytes(65536) if random.random() < 0.5 else b" ".join(random.choice(words) for _ in range(12000))
out = out[:n]
open(sys.argv[1], "wb").write(out)
for _ in range(3):
    at = random.randrange(n - 4096)
    out[at:at + 4096] = random.randbytes(4096)
open(sys.argv[2], "wb").write(out)
PY
}
