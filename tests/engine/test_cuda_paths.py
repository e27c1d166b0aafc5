"""CUDA-only code driven on the CPU: graph capture and replay, and event timing, with torch.cuda stand-ins.

The stand-in graph records every aten op run inside ``torch.cuda.graph`` (a dispatch mode) and replays
them on the same tensors, copying results back into the captured outputs: the static-memory semantics of a
real CUDA graph. An op that would synchronise the host inside the captured region fails the test.
"""

from __future__ import annotations

import contextlib
import time

import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten, tree_map  # noqa: E402

from engine.replay import EngineConfig, replay  # noqa: E402
from engine.runner import ModelRunner  # noqa: E402
from sim.catalog.models import ModelSpec  # noqa: E402
from sim.request import TraceRequest  # noqa: E402

aten = torch.ops.aten
#: ops that read a device value on the host (a sync): never allowed in a captured region
SYNC_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
            aten._unique2.default}

TINY = ModelSpec("tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128,
                 vocab_size=256, max_context=1024)
TRACE = [TraceRequest(rid, 0.0, p, o) for rid, p, o in
         [("a", 37, 9), ("b", 5, 12), ("c", 20, 7), ("d", 64, 5), ("e", 16, 10)]]
BASE = EngineConfig(model="tiny", device="cpu", dtype="float32", backend="sdpa", kv_blocks=64, warmup=0,
                    offline=True, scheduler="vllm")


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNC_OPS or (func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None):
            raise AssertionError(f"{func} synchronises inside a captured CUDA graph")
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


class FakeCUDAGraph:
    """Records the captured ops; ``replay`` reruns them on the same inputs and writes the captured outputs."""

    def __init__(self) -> None:
        self.ops: list = []

    def pool(self) -> tuple:
        return ("pool", id(self))

    def replay(self) -> None:
        env: dict[int, torch.Tensor] = {}

        def sub(x):
            return env.get(id(x), x) if isinstance(x, torch.Tensor) else x

        for func, args, kwargs, out in self.ops:
            new = func(*tree_map(sub, args), **tree_map(sub, kwargs))
            for o, n in zip(tree_flatten(out)[0], tree_flatten(new)[0]):
                if isinstance(o, torch.Tensor) and o is not n:
                    env[id(o)] = n
        for func, _args, _kwargs, out in self.ops:  # static memory: the captured tensors hold the new values
            for o in tree_flatten(out)[0]:
                if isinstance(o, torch.Tensor) and id(o) in env:
                    o.copy_(env[id(o)])


class _FakeStream:
    def wait_stream(self, other) -> None:
        pass

    def synchronize(self) -> None:
        pass


@contextlib.contextmanager
def _fake_graph(graph: FakeCUDAGraph, pool=None, stream=None):
    assert isinstance(stream, _FakeStream), "capture on the stream the warm-up ran on"
    with _Recorder() as rec:
        yield
    graph.ops = rec.ops


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: _FakeStream())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeCUDAGraph)
    monkeypatch.setattr(torch.cuda, "graph", _fake_graph)


def _capturing_runner() -> ModelRunner:
    runner = ModelRunner(TINY, device="cpu", dtype=torch.float32, kv_blocks=64, backend="sdpa", cuda_graphs=True)
    runner.graphs.capture = True  # as on CUDA, with the stand-ins
    return runner


def test_capture_ahead_covers_the_run_and_writes_only_the_scratch_block(fake_cuda):
    runner = _capturing_runner()
    before = runner.kv_cache.data.clone()
    n = runner.graphs.capture_ahead(max_seqs=4, max_tokens=40)  # sizes 1, 2, 4 x widths 1, 2, 4 blocks
    assert n == 9 == runner.graphs.captures and not runner.graphs.disabled
    scratch = runner.graphs.scratch_block
    assert torch.equal(runner.kv_cache.data[:, :, :scratch], before[:, :, :scratch])
    assert runner.graphs.capture_ahead(max_seqs=4, max_tokens=40) == 0  # nothing twice


def test_replayed_graphs_give_the_eager_ids_and_no_capture_lands_in_a_measured_iteration(fake_cuda):
    runner = _capturing_runner()
    graphs = replay(TRACE, BASE, runner=runner)
    eager = replay(TRACE, BASE, cuda_graphs=False)
    assert graphs.token_ids == eager.token_ids
    b = graphs.batches
    assert b["cuda_graph"].any() and not b["cuda_graph"].all()  # decode-only batches replayed graphs
    assert not b["graph_captured"].any()  # all captured during warm-up
    assert graphs.summary["cost_model"]["cuda_graph_captures"] == runner.graphs.captures > 0


def test_event_timing_branch_of_the_op_timer(monkeypatch):
    """calibration.timing.time_call on a 'cuda' device: events recorded around each call, read after one
    synchronize, converted from milliseconds."""
    from calibration.timing import TimingSettings, time_call

    class FakeEvent:
        def __init__(self, enable_timing: bool = False) -> None:
            assert enable_timing
            self.t = None

        def record(self) -> None:
            self.t = time.perf_counter()

        def elapsed_time(self, end: FakeEvent) -> float:
            return (end.t - self.t) * 1e3

    syncs = []
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: syncs.append(1))
    t = time_call(lambda i: time.sleep(0.002), torch.device("cuda"), TimingSettings(warmup=1, min_repeats=5,
                                                                                   max_repeats=5))
    assert t.repeats == 5 and 0.0019 < t.median_s < 0.02 and len(syncs) >= 2


def test_graph_decode_forward_at_llama_2_7b_shapes_on_the_meta_device():
    """The captured decode forward at Llama-2-7B's real shapes, without its memory (meta tensors): static output
    shapes, the same op sequence whatever the batch's contents, and no op that reads a device value on the host."""
    from engine.cuda_graphs import DecodeGraphs
    from engine.kv_cache import PagedKVCache
    from engine.model import LlamaModel
    from sim.catalog.models import get_model

    spec = get_model("llama-2-7b")
    model = LlamaModel(spec, device="meta", dtype=torch.bfloat16)
    kv = PagedKVCache(spec, 2049, 16, device="meta", dtype=torch.bfloat16)
    graphs = DecodeGraphs(model, kv, 16, 2048, capture=False)
    g = graphs._make(32, 64)  # 32 decodes, 64 blocks (1,024 keys) each
    ops = []
    for _ in range(2):
        with _Recorder() as rec:
            g.run()
        ops.append([str(op[0]) for op in rec.ops])
    assert ops[0] == ops[1] and len(ops[0]) > 10 * spec.num_layers
    assert tuple(g.logits.shape) == (32, spec.vocab_size) and tuple(g.sampled.shape) == (32,)
    assert g.logits.device.type == "meta"
