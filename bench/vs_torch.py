"""caffeish against PyTorch on the CPU: the same nets, one training iteration at a time.

    python bench/vs_torch.py [--iterations N] [--no-memory] [--threads T] [NET ...]

NET is any of lenet (batch 64), cifar10_quick (batch 100), caffenet (batch 32); all by default.
``--batch NET=B`` overrides a batch size.

Ours is the deploy prototxt with ``force_backward`` and the batch set through the Input shape, run in
the TRAIN phase by an SGD solver built over that net (momentum 0.9, weight decay 5e-4); PyTorch's is the
equivalent ``torch.nn.Sequential`` built layer by layer from our net (same shapes, our weights copied
in, outputs checked to agree) with ``torch.optim.SGD`` (same momentum and weight decay).  Both run with
the same number of threads: our BLAS's (threadpoolctl).

Runs alternate in blocks (3 of ours, 3 of torch, ...; the first of each block is a warm-up, not
counted: the other framework's idle threads may still be spinning) so that a busy machine slows both
alike; each column is a median over the iterations:
  forward   net.forward_prefilled()            | model(x)
  backward  clear_param_diffs + backward pass  | zero_grad() + out.backward(g)
  update    solver.apply_update()              | optimizer.step()
Peak memory is measured in a fresh subprocess per framework and net: the peak resident set size
during three training iterations (the kernel's high-water mark, reset once the net is built), less the
resident size after the imports -- so parameters, gradients, solver history, activations and work
buffers all count, and one-time set-up spikes do not.

torch is a bench-only dependency (``pip install -e '.[bench]'``); the caffeish package never imports it.
"""
import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

import numpy

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NETS = {
    "lenet": ("models/lenet/lenet_deploy.prototxt", 64),
    "cifar10_quick": ("models/cifar10_quick/cifar10_quick_deploy.prototxt", 100),
    "caffenet": ("models/caffenet/deploy.prototxt", 32),
}
MOMENTUM, WEIGHT_DECAY, LR = 0.9, 5e-4, 0.01
BLOCK = 3


def blas_threads():
    """The number of threads our BLAS runs with (threadpoolctl if it is installed, else the CPU count)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return os.cpu_count() or 1
    counts = [int(info.get("num_threads", 0)) for info in threadpool_info() if info.get("user_api") == "blas"]
    return max(counts) if counts else (os.cpu_count() or 1)


# -- ours -----------------------------------------------------------------------------------
def net_param(name, batch):
    from caffeish.prototxt import read_net_param
    param = read_net_param(str(ROOT / NETS[name][0]))
    param.force_backward = True
    for layer in param.layer:
        if layer.type == "Input":
            layer.input_param.shape[0].dim[0] = batch
    return param


def build_ours(name, batch):
    """An SGD solver whose (TRAIN-phase) net is the deploy net at ``batch``."""
    import caffeish
    from caffeish.prototxt import parse_text
    sp = parse_text(f'type: "SGD" base_lr: {LR} lr_policy: "fixed" momentum: {MOMENTUM} '
                    f'weight_decay: {WEIGHT_DECAY}', caffeish.caffe_pb2.SolverParameter())
    sp.net_param.CopyFrom(net_param(name, batch))
    solver = caffeish.get_solver(sp)
    net = solver.net
    rng = numpy.random.default_rng(0)
    data = net.blobs[net.inputs[0]]
    data.data[...] = rng.standard_normal(data.shape, dtype=numpy.float32)
    out = net.blobs[net.outputs[0]]
    out.diff[...] = rng.standard_normal(out.shape, dtype=numpy.float32)
    return solver


def ours_iteration(solver):
    net = solver.net
    t0 = time.perf_counter()
    net.forward_prefilled()
    t1 = time.perf_counter()
    net.clear_param_diffs()
    net.backward_from_to()
    t2 = time.perf_counter()
    solver.apply_update()
    solver.iter += 1
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


# -- torch ----------------------------------------------------------------------------------
def build_torch(net, copy_weights=True):
    """torch.nn.Sequential equivalent to a chain-shaped caffeish net (Input first)."""
    import torch
    from torch import nn
    from caffeish.proto import caffe_pb2
    PP = caffe_pb2.PoolingParameter
    mods = []
    for layer, bottoms, tops in zip(net.layers, net.bottom_vecs, net.top_vecs):
        kind = layer.type
        in_place = bool(bottoms) and tops[0] is bottoms[0]
        if kind == "Input":
            continue
        if kind == "Convolution":
            conv = nn.Conv2d(layer.channels, layer.num_output, tuple(layer.kernel), tuple(layer.stride),
                             tuple(layer.pad), tuple(layer.dilation), layer.group, layer.bias_term)
            mods.append(conv)
        elif kind == "Pooling":
            k, s, q = (layer.kernel_h, layer.kernel_w), (layer.stride_h, layer.stride_w), (layer.pad_h, layer.pad_w)
            if layer.method == PP.MAX:
                mods.append(nn.MaxPool2d(k, s, q, ceil_mode=True))
            else:
                mods.append(nn.AvgPool2d(k, s, q, ceil_mode=True, count_include_pad=True))
        elif kind == "LRN":
            mods.append(nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k))
        elif kind == "InnerProduct":
            if len(bottoms[0].shape) > 2:
                mods.append(nn.Flatten(1))
            mods.append(nn.Linear(layer.K, layer.num_output, layer.bias_term))
        elif kind == "ReLU":
            mods.append(nn.ReLU(inplace=in_place))
        elif kind == "Dropout":
            mods.append(nn.Dropout(layer.ratio))  # in place after an in-place ReLU, autograd refuses it
        elif kind == "Softmax":
            mods.append(nn.Softmax(dim=layer.axis))
        else:
            raise SystemExit(f"vs_torch: no torch equivalent for layer type {kind}")
        if copy_weights and layer.blobs:
            m = mods[-1]
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(numpy.ascontiguousarray(layer.blobs[0].data)))
                if len(layer.blobs) > 1:
                    m.bias.copy_(torch.from_numpy(numpy.ascontiguousarray(layer.blobs[1].data)))
    return nn.Sequential(*mods)


def build_torch_run(solver):
    import torch
    net = solver.net
    model = build_torch(net).train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    # force_backward: ours computes the input's gradient too, so torch is asked for it as well.
    x = torch.from_numpy(net.blobs[net.inputs[0]].data.copy()).requires_grad_(True)
    g = torch.from_numpy(net.blobs[net.outputs[0]].diff.copy())
    return model, opt, x, g


def check_agreement(solver, model, x):
    """Forward outputs agree (dropout off in both) -- the two nets really are the same."""
    import torch
    from caffeish.proto import caffe_pb2
    net = solver.net
    dropouts = [layer for layer in net.layers if layer.type == "Dropout"]
    for layer in dropouts:
        layer.phase = caffe_pb2.TEST
    net.forward_prefilled()
    ours = net.blobs[net.outputs[0]].data.copy()
    for layer in dropouts:
        layer.phase = caffe_pb2.TRAIN
    model.eval()
    with torch.no_grad():
        theirs = model(x).detach().numpy()
    model.train()
    if ours.shape != theirs.shape or not numpy.allclose(ours, theirs, rtol=1e-3, atol=1e-5):
        raise SystemExit(f"vs_torch: {net.name}: outputs differ (max abs {abs(ours - theirs).max():g})")


def torch_iteration(model, opt, x, g):
    t0 = time.perf_counter()
    out = model(x)
    t1 = time.perf_counter()
    opt.zero_grad()
    x.grad = None
    out.backward(g)
    t2 = time.perf_counter()
    opt.step()
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


# -- memory ---------------------------------------------------------------------------------
def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _reset_peak():
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(framework, name, batch, threads):
    """Peak RSS increase (MiB) of three training iterations, printed as JSON."""
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
    import caffeish  # noqa: F401  (both sides pay for numpy and the schema alike)
    base = _status_kb("VmRSS")
    solver = build_ours(name, batch)
    if framework == "torch":
        model, opt, x, g = build_torch_run(solver)
        del solver
        run = lambda: torch_iteration(model, opt, x, g)  # noqa: E731
    else:
        run = lambda: ours_iteration(solver)  # noqa: E731
    exact = _reset_peak()
    for _ in range(3):
        run()
    peak = _status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": (peak - base) / 1024.0, "exact": exact}))


def measure_memory(framework, name, batch, threads):
    proc = subprocess.run([sys.executable, __file__, "--memory-child", framework, name, str(batch),
                           "--threads", str(threads)], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"vs_torch: memory run {framework} {name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]


# -- main -----------------------------------------------------------------------------------
def bench_net(name, batch, iterations, memory, threads):
    solver = build_ours(name, batch)
    model, opt, x, g = build_torch_run(solver)
    check_agreement(solver, model, x)
    ours_iteration(solver), torch_iteration(model, opt, x, g)  # warm-up: buffers, caches, kernels
    ours, theirs = [], []
    # Blocks of BLOCK iterations, alternating, the first of each block not counted: one framework's idle
    # worker threads (OpenBLAS's, OpenMP's) may still spin when the other starts, and would slow it.
    while len(ours) < iterations:
        ours_iteration(solver)
        ours.extend(ours_iteration(solver) for _ in range(BLOCK - 1))
        torch_iteration(model, opt, x, g)
        theirs.extend(torch_iteration(model, opt, x, g) for _ in range(BLOCK - 1))
    med = lambda runs, k: statistics.median(r[k] for r in runs) * 1e3  # noqa: E731
    row = {"net": name, "batch": batch}
    for k, what in enumerate(("forward", "backward", "update")):
        row[what] = (med(ours, k), med(theirs, k))
    row["total"] = (statistics.median(sum(r) for r in ours) * 1e3, statistics.median(sum(r) for r in theirs) * 1e3)
    del solver, model, opt
    if memory:
        row["memory"] = (measure_memory("ours", name, batch, threads), measure_memory("torch", name, batch, threads))
    return row


def print_table(rows):
    cols = ["forward", "backward", "fwd+bwd", "update", "total", "peak MiB"]
    print(f"{'net':<14}{'batch':>6}  " + "  ".join(f"{c:>24}" for c in cols))
    print(f"{'':<20}  " + "  ".join(f"{'ours / torch = ratio':>24}" for _ in cols))
    for row in rows:
        fb = (row["forward"][0] + row["backward"][0], row["forward"][1] + row["backward"][1])
        cells = [row["forward"], row["backward"], fb, row["update"], row["total"], row.get("memory")]
        text = []
        for c in cells:
            if c is None:
                text.append(f"{'-':>24}")
            else:
                text.append(f"{c[0]:>8.1f} /{c[1]:>8.1f} = {c[0] / c[1]:>4.2f}")
        print(f"{row['net']:<14}{row['batch']:>6}  " + "  ".join(text))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nets", nargs="*", metavar="NET")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--batch", action="append", default=[], metavar="NET=B")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--memory-child", nargs=3, metavar=("FRAMEWORK", "NET", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = args.threads or blas_threads()
    if args.memory_child:
        framework, name, batch = args.memory_child
        return memory_child(framework, name, int(batch), threads)
    unknown = [n for n in args.nets if n not in NETS]
    if unknown:
        parser.error(f"unknown net(s) {unknown}; choose from {list(NETS)}")
    import torch
    torch.set_num_threads(threads)
    batches = {name: b for name, (_, b) in NETS.items()}
    for item in args.batch:
        name, _, b = item.partition("=")
        batches[name] = int(b)
    print(f"threads: {threads} (torch {torch.__version__}, numpy {numpy.__version__}); "
          f"median of {args.iterations} iterations in alternating blocks of {BLOCK}")
    rows = []
    for name in args.nets or list(NETS):
        rows.append(bench_net(name, batches[name], args.iterations, args.memory, threads))
        print_table(rows[-1:])
    print()
    print_table(rows)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
