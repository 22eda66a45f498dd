"""The --device cuda half of bench_render.py: text -> GLM-4.1V pixel_values on the GPU."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

import glyph_rt
from bench.common import slug, write_result
from glyph_rt.ops.pixel_values import normalize_lut
from glyph_rt.ops.raster import MODE_BG, MODE_INK, MODE_PIXELS, RasterBatch, raster_tiles, set_image_targets
from glyph_rt.render.config import GLYPH_CONFIG_EN, RenderConfig
from glyph_rt.render.gpu import inputs_of_batch, render_inputs

# Peak DRAM bandwidth (GB/s) by device name, for when torch does not report clock and bus width.
PEAK_GBPS = {"H200": 4800, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039,
             "A100-SXM4-40GB": 1555, "A100-PCIE": 1555, "L40S": 864}


def peak_gbps(device) -> float | None:
    p = torch.cuda.get_device_properties(device)
    clock, bus = getattr(p, "memory_clock_rate", 0), getattr(p, "memory_bus_width", 0)
    if clock and bus:  # kHz, bits; double data rate
        return 2 * clock * 1e3 * bus / 8 / 1e9
    return next((v for k, v in PEAK_GBPS.items() if k in p.name), None)


# GPU clock cycles (about 10-20 ms) of the spin kernel device_ms queues its launches behind
SPIN_CYCLES = 20_000_000


def cuda_ms(fn, repeat: int, spin: bool = False) -> float:
    """Median milliseconds of fn() between CUDA events, after a warm-up call. With spin, the GPU first runs a spin
    kernel while the host queues fn()'s launches: the events then time the device's work alone, without the host's
    launch latency (fn() must not wait for the device)."""
    fn()
    times = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if spin:
            torch.cuda._sleep(SPIN_CYCLES)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def device_ms(fn, repeat: int) -> float:
    return cuda_ms(fn, repeat, spin=True)


def busy_ms(fn, repeat: int) -> float:
    """Mean milliseconds the GPU spends in fn()'s kernels and copies (torch.profiler's device time),
    after a warm-up call: the device's own work, without the host's preparation between launches."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeat):
            fn()
        torch.cuda.synchronize()
    return device_us(prof.events()) / 1e3 / repeat


def device_us(events) -> float:
    """Microseconds of the device's own events (kernels, copies, fills) among a profile's: an op that launched one
    also reports its time as its own, so summing every event (or key_averages()) counts it twice."""
    from torch.autograd import DeviceType

    return sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)


def wall_ms(fn, repeat: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]


def uploaded(items, device, backend, lut) -> tuple[RasterBatch, dict, torch.Tensor, torch.Tensor]:
    """(batch, its device tensors, pixel_values, pinned ink buffer) for (document, first page, stop page) items, as
    inputs_of_batch has them when its kernels start: laid out, built on the host, uploaded and binned, each page's
    target size and first row set, the output allocated. The device-time figures start from here."""
    pv, grid, _ = inputs_of_batch(items, device, backend, "glm4v", torch.float32, lut)
    batch = RasterBatch([d for d, _, _ in items], [(s, e) for _, s, e in items])
    dev = batch.to_device(device)
    g = grid.cpu().numpy()
    rows = g[:, 1] * g[:, 2]
    set_image_targets(dev, g[:, 1:] * 14, np.cumsum(rows) - rows)
    return batch, dev, pv, torch.empty(dev["ink"].shape, dtype=dev["ink"].dtype, pin_memory=device.type == "cuda")


def device_work(backend, batch: RasterBatch, dev: dict, pv: torch.Tensor, ink: torch.Tensor, lut) -> None:
    """inputs_of_batch's work on the device for an uploaded batch: the background and ink extent where the
    config crops or snaps (and their copy to the host), then pixel_values. Never waits for the device."""
    if batch.needs_ink():
        dev["ink"].zero_()  # the extents are maxima over tiles
        raster_tiles(backend, MODE_BG, batch, dev)
        raster_tiles(backend, MODE_INK, batch, dev)
        ink.copy_(dev["ink"], non_blocking=True)
    raster_tiles(backend, MODE_PIXELS, batch, dev, out=pv, lut=lut)


def run_gpu(args, text: str) -> None:
    from bench.bench_render import official_pages_per_s
    from triton.testing import do_bench

    if not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device")
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device)
    backend = args.backend
    # Glyph's config on a canvas snapped to multiples of 28: the model input is written directly
    cfg = dataclasses.replace(RenderConfig.from_glyph_dict({**GLYPH_CONFIG_EN, "font-path": args.font}), snap=28)
    render = lambda: render_inputs(text, cfg, device=device, backend=backend)  # noqa: E731
    mi = render()
    n_pages = int(mi.image_grid_thw.shape[0])
    if mi.fused_pages != n_pages:
        print(f"warning: {n_pages - mi.fused_pages} of {n_pages} pages went through the resize path")

    # one 128K-token document, layout excluded. Graded: the device's work (background, ink, pixel_values) on the
    # batch already built and uploaded. Beside it: the same between CUDA events with the host's batch building and
    # upload (inputs_of_batch whole), and the GPU's busy time in inputs_of_batch's kernels and copies (profiler)
    doc = glyph_rt.Document(text, cfg)
    lut = normalize_lut(device)
    one = [(doc, 0, doc.num_pages)]
    batch, dev, pv, ink = uploaded(one, device, backend, lut)
    gpu_ms = device_ms(lambda: device_work(backend, batch, dev, pv, ink, lut), args.repeat)
    host_ms = cuda_ms(lambda: inputs_of_batch(one, device, backend, "glm4v", torch.float32, lut), args.repeat)
    gpu_busy = busy_ms(lambda: inputs_of_batch(one, device, backend, "glm4v", torch.float32, lut), args.repeat)
    # the pixel_values kernel alone, for the bandwidth figure
    kernel_ms = do_bench(lambda: raster_tiles(backend, MODE_PIXELS, batch, dev, out=pv, lut=lut), return_mode="median")
    written = pv.numel() * pv.element_size()
    gbps = written / (kernel_ms * 1e-3) / 1e9
    peak = peak_gbps(device)
    wall_128k = wall_ms(render, args.repeat)
    shape = {"chars": len(text), "text_tokens": getattr(args, "tokens", None), "pages": n_pages,
             "pixel_values": list(pv.shape), "dtype": "float32", "model": "glm4v", "backend": backend}
    rows_out = [
        {"what": "text -> pixel_values, 1 document (GPU time on the uploaded batch, layout excluded)", "ms": gpu_ms,
         **shape},
        {"what": "the same with the host's batch building and upload (CUDA events, layout excluded)", "ms": host_ms},
        {"what": "the same, the GPU's busy time in its kernels and copies, upload included (profiler)",
         "ms": gpu_busy},
        {"what": "pixel_values kernel alone", "ms": kernel_ms, "gbps": gbps, "bytes_written": written},
        {"what": "text -> pixel_values, 1 document (wall, with layout)", "ms": wall_128k},
    ]
    summary = {"gpu_ms_128k": round(gpu_ms, 3), "host_inclusive_ms_128k": round(host_ms, 3),
               "gpu_busy_ms_128k": round(gpu_busy, 3),
               "wall_ms_128k": round(wall_128k, 2), "gbps": round(gbps, 1), "kernel_ms_128k": round(kernel_ms, 4)}
    name = f"render-gpu-{slug(gpu)}.json"
    write_result(args, name, "render-gpu", rows_out, summary, device=device)  # the single document's figures, before the rest

    # batch throughput: many documents in bf16, layout in worker threads, 512 pages per launch
    texts = [text] * args.batch_docs
    batch_ms = wall_ms(lambda: render_inputs(texts, cfg, device=device, backend=backend, dtype=torch.bfloat16,
                                             batch_pages=512, workers=args.workers, max_bytes=1 << 40),
                       max(1, args.repeat // 2))
    pages_per_s = n_pages * args.batch_docs / (batch_ms * 1e-3)
    docs = [glyph_rt.Document(text, cfg) for _ in range(8)]
    many = [(d, 0, d.num_pages) for d in docs]
    eight = uploaded(many, device, backend, lut)
    gpu_batch_ms = device_ms(lambda: device_work(backend, *eight, lut), max(1, args.repeat // 2))
    host_batch_ms = cuda_ms(lambda: inputs_of_batch(many, device, backend, "glm4v", torch.float32, lut),
                            max(1, args.repeat // 2))
    gpu_pages_per_s = n_pages * len(docs) / (gpu_batch_ms * 1e-3)
    host_pages_per_s = n_pages * len(docs) / (host_batch_ms * 1e-3)

    # baselines in the same run: the CPU path (C++ render + torch pixel_values), the official pipeline
    t = time.perf_counter()
    render_inputs(text, cfg, device="cpu", backend="cpu")
    cpu_ms = (time.perf_counter() - t) * 1e3
    official_pps = official_pages_per_s(text[: args.official_chars], args.font)
    official_ms = n_pages / official_pps * 1e3 if official_pps else None

    rows_out += [
        {"what": f"batch of {args.batch_docs} documents, bf16 (wall, {args.workers} layout threads)", "ms": batch_ms,
         "pages_per_s": pages_per_s},
        {"what": "batch of 8 laid-out documents (GPU time on the uploaded batch)", "ms": gpu_batch_ms,
         "pages_per_s": gpu_pages_per_s},
        {"what": "the same with the host's batch building and upload (CUDA events)", "ms": host_batch_ms,
         "pages_per_s": host_pages_per_s},
        {"what": "CPU path: C++ render + torch pixel_values (1 document, wall)", "ms": cpu_ms},
        {"what": "official reportlab+pdftoppm, per page x pages (1 core)", "ms": official_ms},
    ]
    summary.update({
        "pages_per_s": round(pages_per_s, 1),
        "speedup_vs_official": round(official_ms / wall_128k, 1) if official_ms else None,
        "gpu_pages_per_s": round(gpu_pages_per_s, 1),
        "host_inclusive_pages_per_s": round(host_pages_per_s, 1),
        "peak_gbps": round(peak, 1) if peak else None,
        "bandwidth_fraction": round(gbps / peak, 3) if peak else None,
        "speedup_vs_cpu": round(cpu_ms / wall_128k, 1),
    })
    print(f"{gpu} ({backend}): {len(text):,} characters -> {n_pages} pages -> pixel_values {list(pv.shape)}")
    for r in rows_out:
        ms = "-" if r["ms"] is None else f"{r['ms']:.3f} ms"
        extra = "".join(f"  {k}={r[k]:,.1f}" for k in ("pages_per_s", "gbps") if k in r)
        print(f"  {r['what']:66s} {ms:>12s}{extra}")
    print(f"summary {summary}")
    p = write_result(args, name, "render-gpu", rows_out, summary, device=device)
    print(f"wrote {p}")
