"""What launched ranks listen on: loopback only, nothing at all for world size 1, and
nothing left once :func:`distributed.launch` returns.

Listening sockets are read from ``/proc`` (``net/tcp``, ``net/tcp6`` and the process's file
descriptors), so the tests run on Linux only.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from mdctr.platform import distributed

pytestmark = pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="reads /proc (Linux)")

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}  # the last: IPv4 loopback on an IPv6 socket
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column


def _address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def listening(pid: int | str = "self") -> list[tuple[str, int]]:
    """``(address, port)`` of every listening TCP socket process ``pid`` holds."""
    table = {}
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == _LISTEN:
                addr, port = cols[1].split(":")
                table[cols[9]] = (_address(addr), int(port, 16))
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:[") and target[8:-1] in table:
            found.append(table[target[8:-1]])
    return sorted(found)


def test_listening_sees_a_socket_and_its_address():
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        assert ("0.0.0.0", s.getsockname()[1]) in listening()
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        s.listen()
        assert ("::1", s.getsockname()[1]) in listening()


def test_loopback_interface_holds_127_0_0_1():
    name = distributed.loopback_interface()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
    assert socket.inet_ntoa(raw[20:24]) == "127.0.0.1"


def report(rank: int, world: int, out_dir: str) -> None:
    """Each rank, with its process group connected: what it and the launching process listen on."""
    t = torch.ones(1)
    dist.all_reduce(t)  # the transport's pairs are connected by now
    seen = {"rank": listening(), "parent": listening(os.getppid()) if world > 1 else [],
            "ifname": os.environ.get("GLOO_SOCKET_IFNAME")}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(seen))
    dist.barrier()  # both ranks are still up while either looks


def test_two_ranks_listen_on_loopback_only(tmp_path):
    before = listening()
    distributed.launch(report, 2, str(tmp_path))
    seen = [json.loads(Path(tmp_path, f"rank{r}.json").read_text()) for r in range(2)]
    for s in seen:
        assert {addr for addr, _ in s["rank"]} <= LOOPBACK, s
        assert s["ifname"] == distributed.loopback_interface()
    # the launching process opens nothing: there is no rendezvous server
    assert [tuple(x) for x in seen[0]["parent"]] == before
    assert listening() == before


def test_one_rank_opens_no_socket(tmp_path, monkeypatch):
    """World size 1 has no rendezvous and no transport: the solo process group."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "caller's")
    before = listening()
    distributed.launch(report, 1, str(tmp_path))
    seen = json.loads(Path(tmp_path, "rank0.json").read_text())
    assert [tuple(x) for x in seen["rank"]] == before
    assert listening() == before  # none left behind
    assert os.environ["GLOO_SOCKET_IFNAME"] == "caller's"  # restored


_SHARDED_LAUNCHES = """
import json, sys
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from mdctr.platform.config import EmbeddingOptim
from mdctr.platform.distributed import launch, shard
sys.path.insert(0, {tests!r})
from test_listeners import listening

class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ebc = EmbeddingBagCollection(device=torch.device("meta"), tables=[
            EmbeddingBagConfig(name="t", embedding_dim=8, num_embeddings=50, feature_names=["f"])])

    def forward(self, kjt):
        return self.ebc(kjt)["f"]

def train(rank, world):
    model = shard(Model(), device=torch.device("cpu"), batch_size=4, optim=EmbeddingOptim(lr=0.1))
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=torch.arange(4), lengths=torch.ones(4, dtype=torch.int))
    model(kjt).sum().backward()

after = []
for _ in range(3):
    launch(train, 1)
    after.append(listening())
print(json.dumps(after))
"""


def test_sharded_models_leave_no_listener_behind():
    """A sharded model with the in-backward optimizer (what training builds), launched three
    times in one fresh process, as ``pipeline replay`` does: no socket outlives its launch
    (TorchRec's first, lazy import of ``torch.distributed.optim`` would pin the first group)."""
    code = _SHARDED_LAUNCHES.format(tests=str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[], [], []]
