"""caffeish on the GPU against its own CPU run and against PyTorch on the same GPU: one training iteration at a time.

    python bench/gpu.py [--iterations N] [--cpu-iterations M] [--no-torch] [--no-cpu] [--json OUT] [NET ...]

NET is any of lenet (batch 64), cifar10_quick (batch 100), caffenet (batch 256); all by default.  An iteration
is forward + backward + SGD update (momentum 0.9, weight decay 5e-4) of the deploy net with ``force_backward``,
as in bench/vs_torch.py, whose net and torch-model building this reuses.  GPU times are the mean over N
iterations after two warm-up ones, between ``cupy.cuda.Device().synchronize()`` / ``torch.cuda.synchronize()``
calls.  Peak device memory: ours is the most bytes CuPy's memory pool had handed out at once (a memory hook
counts every allocation and free, from the net's set-up through two iterations); torch's is
``torch.cuda.max_memory_allocated()``.  The CPU column is our own numpy run, over fewer iterations; CaffeNet at
batch 256 is timed at batch 32 and scaled linearly (the output says so).  Exits with status 2 without a GPU.
"""
import argparse
import json
import pathlib
import sys
import time

import numpy

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import vs_torch  # noqa: E402  (the nets, our CPU solver and the torch model)

NETS = {"lenet": 64, "cifar10_quick": 100, "caffenet": 256}
#: Largest batch timed on the CPU; larger ones are timed at this batch and scaled linearly.
CPU_BATCH = {"caffenet": 32}


def gpu_or_exit():
    from caffeish import backend
    if not backend.gpu_available():
        why = "CuPy is not installed" if backend.cupy is None else "CuPy sees no CUDA device on this machine"
        print(f"bench/gpu.py needs a CUDA GPU: {why}. Nothing was measured.", file=sys.stderr)
        sys.exit(2)
    return backend.cupy


class PeakMemory:
    """A CuPy memory hook: the most bytes the memory pool had handed out at once while it was on."""

    def __init__(self, cupy):
        class Hook(cupy.cuda.MemoryHook):
            name = "caffeish-peak"

            def __init__(self):
                self.current = self.peak = 0

            def malloc_postprocess(self, **kwargs):  # device_id, size, mem_size, mem_ptr, pmem_id
                self.current += kwargs["mem_size"]
                self.peak = max(self.peak, self.current)

            def free_postprocess(self, **kwargs):  # device_id, mem_size, mem_ptr, pmem_id
                self.current -= kwargs["mem_size"]
        self.hook = Hook()


def build_ours_gpu(name, batch):
    """vs_torch's solver, built in GPU mode, with random input and output gradient on the device."""
    import caffeish
    from caffeish import backend
    from caffeish.prototxt import parse_text
    caffeish.set_mode_gpu()
    sp = parse_text(f'type: "SGD" base_lr: {vs_torch.LR} lr_policy: "fixed" momentum: {vs_torch.MOMENTUM} '
                    f'weight_decay: {vs_torch.WEIGHT_DECAY}', caffeish.caffe_pb2.SolverParameter())
    sp.net_param.CopyFrom(vs_torch.net_param(name, batch))
    solver = caffeish.get_solver(sp)
    net, rng = solver.net, numpy.random.default_rng(0)
    data, out = net.blobs[net.inputs[0]], net.blobs[net.outputs[0]]
    data.data[...] = backend.to_current(rng.standard_normal(data.shape, dtype=numpy.float32))
    out.diff[...] = backend.to_current(rng.standard_normal(out.shape, dtype=numpy.float32))
    return solver


def time_ours_gpu(cupy, name, batch, iterations):
    peak = PeakMemory(cupy)
    with peak.hook:
        solver = build_ours_gpu(name, batch)
        for _ in range(2):  # warm-up: kernels compiled, buffers allocated
            vs_torch.ours_iteration(solver)
        cupy.cuda.Device().synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        vs_torch.ours_iteration(solver)
    cupy.cuda.Device().synchronize()
    ms = (time.perf_counter() - start) * 1e3 / iterations
    del solver
    cupy.get_default_memory_pool().free_all_blocks()
    return ms, peak.hook.peak


def time_torch_gpu(name, batch, iterations):
    import torch
    import caffeish
    caffeish.set_mode_cpu()
    shapes = vs_torch.build_ours(name, 1)  # a batch-1 CPU net: only its layer shapes are used
    model = vs_torch.build_torch(shapes.net, copy_weights=False).cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=vs_torch.LR, momentum=vs_torch.MOMENTUM,
                          weight_decay=vs_torch.WEIGHT_DECAY)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    shape = (batch,) + tuple(shapes.net.blobs[shapes.net.inputs[0]].shape[1:])
    x = torch.randn(shape, device="cuda", requires_grad=True)  # force_backward: ours computes it too
    g = torch.randn((batch,) + tuple(shapes.net.blobs[shapes.net.outputs[0]].shape[1:]), device="cuda")
    for _ in range(2):
        vs_torch.torch_iteration(model, opt, x, g)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        vs_torch.torch_iteration(model, opt, x, g)
    torch.cuda.synchronize()
    ms = (time.perf_counter() - start) * 1e3 / iterations
    peak = torch.cuda.max_memory_allocated()
    del model, opt, x, g
    torch.cuda.empty_cache()
    return ms, peak


def time_ours_cpu(name, batch, iterations):
    """ms per iteration at ``batch`` (timed at a smaller batch and scaled when CPU_BATCH says so), and the note."""
    import caffeish
    caffeish.set_mode_cpu()
    timed = min(batch, CPU_BATCH.get(name, batch))
    solver = vs_torch.build_ours(name, timed)
    vs_torch.ours_iteration(solver)
    start = time.perf_counter()
    for _ in range(iterations):
        vs_torch.ours_iteration(solver)
    ms = (time.perf_counter() - start) * 1e3 / iterations * batch / timed
    solver.net.close()
    return ms, (f"estimated: timed at batch {timed}, scaled x{batch / timed:g}" if timed != batch else "measured")


def bench(cupy, name, batch, args, torch_ok):
    row = {"net": name, "batch": batch}
    ms, peak = time_ours_gpu(cupy, name, batch, args.iterations)
    row.update(gpu_ms=ms, gpu_images_s=batch * 1e3 / ms, gpu_peak_mib=peak / 2 ** 20)
    if torch_ok:
        ms, peak = time_torch_gpu(name, batch, args.iterations)
        row.update(torch_ms=ms, torch_images_s=batch * 1e3 / ms, torch_peak_mib=peak / 2 ** 20,
                   gpu_vs_torch_time=row["gpu_ms"] / ms, gpu_vs_torch_memory=row["gpu_peak_mib"] / (peak / 2 ** 20))
    if args.cpu:
        ms, note = time_ours_cpu(name, batch, args.cpu_iterations)
        row.update(cpu_ms=ms, cpu_images_s=batch * 1e3 / ms, cpu_note=note, cpu_vs_gpu_time=ms / row["gpu_ms"])
    return row


def print_rows(rows):
    head = (f"{'net':<14}{'batch':>6} {'ours GPU ms':>12} {'img/s':>9} {'peak MiB':>9} {'torch ms':>9} {'img/s':>9} "
            f"{'peak MiB':>9} {'ours/torch t':>12} {'mem':>6} {'ours CPU ms':>12} {'CPU/GPU':>8}")
    print(head)

    def cell(row, key, width, fmt):
        return f"{row[key]:>{width}{fmt}}" if key in row else f"{'-':>{width}}"
    for r in rows:
        print(f"{r['net']:<14}{r['batch']:>6} {cell(r, 'gpu_ms', 12, '.2f')} {cell(r, 'gpu_images_s', 9, '.0f')} "
              f"{cell(r, 'gpu_peak_mib', 9, '.0f')} {cell(r, 'torch_ms', 9, '.2f')} "
              f"{cell(r, 'torch_images_s', 9, '.0f')} "
              f"{cell(r, 'torch_peak_mib', 9, '.0f')} {cell(r, 'gpu_vs_torch_time', 12, '.2f')} "
              f"{cell(r, 'gpu_vs_torch_memory', 6, '.2f')} {cell(r, 'cpu_ms', 12, '.1f')} "
              f"{cell(r, 'cpu_vs_gpu_time', 8, '.1f')}")
    for r in rows:
        if r.get("cpu_note", "measured") != "measured":
            print(f"{r['net']}: CPU time {r['cpu_note']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nets", nargs="*", metavar="NET")
    parser.add_argument("--iterations", type=int, default=20, help="timed GPU iterations (default 20)")
    parser.add_argument("--cpu-iterations", type=int, default=3, help="timed CPU iterations (default 3)")
    parser.add_argument("--no-torch", dest="torch", action="store_false")
    parser.add_argument("--no-cpu", dest="cpu", action="store_false")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    unknown = [n for n in args.nets if n not in NETS]
    if unknown:
        parser.error(f"unknown net(s) {unknown}; choose from {list(NETS)}")
    cupy = gpu_or_exit()
    torch_ok = False
    if args.torch:
        try:
            import torch
            torch_ok = torch.cuda.is_available()
        except ImportError:
            pass
        if not torch_ok:
            print("PyTorch with CUDA is not available: the torch columns are left empty", file=sys.stderr)
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    print(f"GPU: {name.decode() if isinstance(name, bytes) else name} (CuPy {cupy.__version__}); mean of "
          f"{args.iterations} GPU iterations, {args.cpu_iterations} CPU iterations; ratios: ours/torch time and peak "
          "memory, CPU time / GPU time")
    rows = []
    for net in args.nets or list(NETS):
        rows.append(bench(cupy, net, NETS[net], args, torch_ok))
        print_rows(rows[-1:])
        sys.stdout.flush()
    print()
    print_rows(rows)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
